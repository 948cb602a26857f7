"""The batched hot path (issue 5) keeps the behaviour of the one-message path: the listener's
batches (resends, ACK only after queueing), the worker's process_batch (same advisories as
process() one by one, idempotent, one stream entry each) and the atomic advisory write."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest

from tests.hl7build import order_message
from worker.guideline import Knowledge
from worker.hl7.ack import ack_fields
from worker.hl7.parse import peek_msh
from worker.ingest import Ingestor, nothing_to_remember
from worker.ledger import lock_name
from worker.pipeline import Processor
from worker.publish import DeliveryOutcome
from worker.runtime import Stores
from worker.serve import Batcher
from worker.settings import Route, Settings
from worker.store import MemoryDedup, RedisDedup, RedisStore


class Recorder:
    """Publisher double that records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def route(self, application: str, facility: str) -> Route | None:
        return Route(host="127.0.0.1", port=9)

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        assert peek_msh(message).control_id == control_id
        self.sent.append(message)
        return DeliveryOutcome(True, "", "127.0.0.1:9")


def _processor(knowledge: Knowledge) -> tuple[Processor, Recorder, Any]:
    client = fakeredis.FakeRedis()
    stores = Stores(Settings(redis_url=None), client)
    publisher = Recorder()
    processor = Processor(
        Settings(redis_url=None),
        knowledge,
        stores,
        publisher,  # type: ignore[arg-type]
        lambda i, a, d: None,
    )
    return processor, publisher, client


def _batch() -> list[bytes]:
    return [
        order_message(
            control_id="B1",
            placer="PB1",
            patient_id="S1^^^H^MR",
            reason="^Left thigh mass 6 cm deep",
        ),
        order_message(
            control_id="B2",
            placer="PB2",
            patient_id="S2^^^H^MR",
            procedure="73720^MRI LE WO W^CPT4",
            reason="^thigh mass, XR done",
        ),
        order_message(
            control_id="B3",
            placer="PB3",
            patient_id="S1^^^H^MR",  # same patient
            procedure="20206^BIOPSY MUSCLE PERCUTANEOUS^CPT4",
            reason="^core biopsy left thigh mass 6 cm",
        ),
        order_message(
            control_id="B4",
            placer="PB4",
            patient_id="S3^^^H^MR",
            procedure="71260^CT CHEST W^CPT4",
            reason="^cough",
        ),  # out of scope
        order_message(
            control_id="B5",
            msg_type="ORU^R01",
            placer="PB5",
            patient_id="S4^^^H^MR",
            procedure="73720^MRI LE WO W^CPT4",
            reason="^thigh mass",
        ),  # a result: history, no advisory
        order_message(
            control_id="B6",
            placer="PB6",
            patient_id="S5^^^H^MR",
            order_status="CM",
            procedure="73720^MRI LE WO W^CPT4",
            reason="^thigh mass",
        ),  # a completed order writes history
        b"MSH|^~\\&|X\rgarbage",
        order_message(
            control_id="B8", placer="PB8", patient_id="", reason="^Right thigh lump 7 cm"
        ),  # no patient id: no lock
    ]


def _stamps(data: bytes) -> bytes:
    return re.sub(rb"\d{14}", b"T", data)


def test_process_batch_gives_what_process_gives_one_by_one(knowledge: Knowledge) -> None:
    batched, sent_batched, client = _processor(knowledge)
    single, sent_single, _ = _processor(knowledge)
    items = [(m, 1_700_000_000.0) for m in _batch()]
    ids, failed = batched.process_batch(items)
    expected = [i for m, at in items for i in single.process(m, at)]
    assert failed == {}
    assert sorted(ids) == sorted(expected) and len(ids) == 4  # B1, B2, B3, B8
    assert sorted(map(_stamps, sent_batched.sent)) == sorted(map(_stamps, sent_single.sent))
    for rec_id in ids:
        a, b = batched.stores.store.get(rec_id), single.stores.store.get(rec_id)
        assert a is not None and b is not None
        assert a.delivery == "delivered" and a.delivery_attempts == 1 and a.delivered_at
        assert (a.result.verdict, [f.code for f in a.result.flags]) == (
            b.result.verdict,
            [f.code for f in b.result.flags],
        )
    assert client.xlen("oc:advisories") == 4
    assert not list(client.scan_iter("oc:lock:*"))  # every patient lock released
    # Run again (a redelivered task): nothing new is sent or streamed.
    again, failed = batched.process_batch(items)
    assert sorted(again) == sorted(ids) and failed == {}
    assert len(sent_batched.sent) == 4 and client.xlen("oc:advisories") == 4


def test_process_batch_clears_the_journal_of_what_it_processed_in_its_last_write(
    knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.journal import Journal

    processor, _, client = _processor(knowledge)
    journal = Journal(client)
    items = [(m, 1_700_000_000.0) for m in _batch()]
    journal.add(items)
    result_message = items[4][0]  # B5, a result: goes through process(), alone
    process = processor.process

    def failing(data: bytes, received_at: float, down: set[str] | None = None) -> list[str]:
        if data == result_message:
            raise ConnectionError("Redis went away")
        return process(data, received_at, down=down)

    monkeypatch.setattr(processor, "process", failing)
    ids, failed = processor.process_batch(
        items, lambda pipe, done: journal.queue_done(pipe, [items[i][0] for i in done])
    )
    assert list(failed) == [4] and len(ids) == 4
    assert journal.take_stale(-1) == [items[4]]  # only the failed message is left
    for rec_id in ids:
        record = processor.stores.store.get(rec_id)
        assert record is not None and record.delivery == "delivered"


def test_a_batch_of_orders_takes_three_round_trips(
    knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locks and histories (one script), then records and lock releases (one script), then
    delivery states with the journal's clean-up (one pipeline)."""
    from worker.journal import Journal

    processor, publisher, client = _processor(knowledge)
    journal = Journal(client)
    items = [(m, 1_700_000_000.0) for i, m in enumerate(_batch()) if i in (0, 1, 3, 7)]
    journal.add(items)
    pipeline_class = type(client.pipeline(transaction=False))
    execute = pipeline_class.execute
    client_class = type(client)
    command = client_class.execute_command
    trips: list[list[str]] = []

    def counted(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append([str(c[0][0]) for c in pipe.command_stack])
        return execute(pipe, *args, **kwargs)

    def one(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append([str(args[0])])
        return command(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "execute", counted)
    monkeypatch.setattr(client_class, "execute_command", one)
    ids, failed = processor.process_batch(
        items, lambda pipe, done: journal.queue_done(pipe, [items[i][0] for i in done])
    )
    assert failed == {} and len(ids) == 3 and len(publisher.sent) == 3
    assert [t for t in trips[:2]] == [["EVAL"], ["EVAL"]] and len(trips) == 3
    assert trips[-1].count("HSET") == 3 and trips[-1][-3:] == ["HDEL", "ZREM", "HDEL"]
    assert journal.size() == 0


def test_one_log_line_per_checked_message_counts_its_deliveries(
    knowledge: Knowledge, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from worker.logs import JSONFormatter

    processor, publisher, _ = _processor(knowledge)
    with caplog.at_level(logging.INFO, logger="ordercheck"):
        processor.process_batch([(m, 1_700_000_000.0) for m in _batch()[:2]])
    lines = [
        json.loads(JSONFormatter().format(r))
        for r in caplog.records
        if r.name == "ordercheck.pipeline"
    ]
    assert sorted(
        (line["msg"], line["control_id"], line["advisories"], line["delivered"]) for line in lines
    ) == [("checked", "B1", 1, 1), ("checked", "B2", 1, 1)]
    assert len(publisher.sent) == 2


def test_a_patient_locked_by_another_worker_is_waited_for(knowledge: Knowledge) -> None:
    processor, publisher, client = _processor(knowledge)
    msg = order_message(
        control_id="L1", placer="PL1", patient_id="LK1^^^H^MR", reason="^Left thigh mass 6 cm deep"
    )
    client.set(lock_name(["H|LK1"]), b"other", px=300)
    assert client.exists(lock_name(["H|LK1"]))
    started = time.monotonic()
    ids, failed = processor.process_batch([(msg, 1_700_000_000.0)])
    assert failed == {} and len(ids) == 1 and len(publisher.sent) == 1
    assert time.monotonic() - started >= 0.2


def test_add_advisory_writes_once_and_all_together(knowledge: Knowledge) -> None:
    processor, _, client = _processor(knowledge)
    [rec_id] = processor.process(
        order_message(control_id="A1", patient_id="AA1^^^H^MR", reason="^thigh mass 6 cm"),
        1_700_000_000.0,
    )
    store = processor.stores.store
    record = store.get(rec_id)
    assert record is not None and record.raw_out and record.delivery == "delivered"
    assert not store.add_advisory(record.model_copy(update={"delivery": "pending"}), ["H|AA1"])
    again = store.get(rec_id)
    assert again is not None and again.delivery == "delivered"  # nothing overwritten
    assert client.xlen("oc:advisories") == 1
    assert client.zscore("oc:adv:index", rec_id) == 1_700_000_000.0
    assert store.patient_advisories(["H|AA1"], record.received_at) == [rec_id]


class Queue:
    def __init__(self, dedup: MemoryDedup, fail: bool = False) -> None:
        self.dedup = dedup
        self.fail = fail
        self.calls: list[list[bytes]] = []
        self.acks_recorded: list[int] = []  # resend-table size at each broker call

    def many(self, messages: list[tuple[bytes, float]], acks: list[tuple[str, bytes]]) -> None:
        """enqueue_with_acks: queue, and record the ACKs in the same (here: all or nothing) step."""
        if self.fail:
            raise ConnectionError("broker down")
        self.acks_recorded.append(len(self.dedup._acks))
        self.calls.append([m for m, _ in messages])
        self.dedup.set_many(acks, 60)

    def one(self, data: bytes, at: float) -> None:
        """enqueue, one message at a time (the embedded default)."""
        if self.fail:
            raise ConnectionError("broker down")
        self.calls.append([data])

    def never(self, data: bytes, at: float) -> None:
        raise AssertionError("enqueue_with_acks is used")


def test_listener_batch_queues_once_and_answers_resends_with_the_first_ack() -> None:
    dedup = MemoryDedup()
    queue = Queue(dedup)
    ingest = Ingestor(Settings(redis_url=None), dedup, queue.never, lambda r: None, queue.many)
    first = order_message(control_id="R1", reason="^thigh mass")
    [ack1] = ingest.handle_batch([first])
    other = order_message(control_id="R2", reason="^thigh mass")
    replies = ingest.handle_batch([other, first, other, b"not hl7"])
    assert queue.calls == [[first], [other]]  # one broker call per batch, each message once
    assert queue.acks_recorded == [0, 1]  # an ACK is recorded only after its message is queued
    assert replies[1] == ack1  # a resend of an earlier batch
    assert replies[2] == replies[0] and ack_fields(replies[0] or b"") == ("AA", "R2")
    assert ack_fields(replies[3] or b"")[0] == "AE"


def test_listener_batch_refused_when_the_broker_is_down() -> None:
    dedup = MemoryDedup()
    ingest = Ingestor(
        Settings(redis_url=None),
        dedup,
        Queue(dedup).never,
        lambda r: None,
        Queue(dedup, fail=True).many,
    )
    msg = order_message(control_id="D1", reason="^thigh mass")
    replies = ingest.handle_batch([msg, msg])
    assert [ack_fields(r or b"")[0] for r in replies] == ["AR", "AR"]
    assert not dedup._acks  # nothing recorded: the resend is queued


def test_batcher_groups_frames_that_arrive_together() -> None:
    sizes: list[int] = []

    def handle(frames: list[bytes]) -> tuple[list[bytes | None], Any]:
        sizes.append(len(frames))
        time.sleep(0.02)
        return [b"ack:" + f for f in frames], lambda: None

    async def main() -> list[bytes | None]:
        batcher = Batcher(handle, ThreadPoolExecutor(2))
        first = asyncio.ensure_future(batcher.submit(b"0"))
        await asyncio.sleep(0.005)  # the first frame is handled alone, at once
        rest = [batcher.submit(str(i).encode()) for i in range(1, 10)]
        return [await first, *await asyncio.gather(*rest)]

    replies = asyncio.run(main())
    assert replies == [b"ack:" + str(i).encode() for i in range(10)]
    assert sizes == [1, 9]  # the others arrived while it was handled: one batch


def _two_frames_apart(**options: Any) -> tuple[list[int], float]:
    """Submit a frame, then another 50 ms later, to a Batcher made with *options*; returns the
    sizes of the batches handled and the seconds until both were answered."""
    sizes: list[int] = []

    def handle(frames: list[bytes]) -> tuple[list[bytes | None], Any]:
        sizes.append(len(frames))
        return [b"ack:" + f for f in frames], lambda: None

    async def main() -> float:
        batcher = Batcher(handle, ThreadPoolExecutor(1), **options)
        started = time.monotonic()
        first = asyncio.ensure_future(batcher.submit(b"0"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(b"1"))
        assert list(await asyncio.gather(first, second)) == [b"ack:0", b"ack:1"]
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    return sizes, elapsed


@pytest.mark.parametrize(("behind", "expected"), [(False, [1, 1]), (True, [2])])
def test_batcher_waits_to_batch_only_while_the_workers_are_behind(
    behind: bool, expected: list[int]
) -> None:
    # the second frame comes well inside the 0.2 s wait, well after an idle batch
    sizes, _ = _two_frames_apart(behind=lambda: behind, behind_linger=0.2)
    assert sizes == expected


@pytest.mark.parametrize(
    ("peers", "linger", "at_least", "at_most"), [(2, 5.0, 0.0, 2.0), (3, 0.3, 0.29, 5.0)]
)
def test_batcher_stops_waiting_once_every_connection_has_a_frame_waiting(
    peers: int, linger: float, at_least: float, at_most: float
) -> None:
    """Each connection sends its next frame only after its ACK: with as many frames waiting as
    connections open, no other frame can come, so the wait for a fuller batch ends."""
    sizes, elapsed = _two_frames_apart(
        behind=lambda: True, behind_linger=linger, peers=lambda: peers
    )
    assert sizes == [2]
    assert at_least <= elapsed < at_most


@pytest.mark.parametrize("size", [1, 3])
def test_dedup_many_on_redis(size: int) -> None:
    dedup = RedisDedup(RedisStore(fakeredis.FakeRedis()))
    keys = [f"k{i}" for i in range(size)]
    assert dedup.get_many(keys) == [None] * size
    dedup.set_many([(k, k.encode()) for k in keys], 60)
    assert dedup.get_many(keys) == [k.encode() for k in keys]


def test_acks_are_recorded_for_resends_after_they_are_returned() -> None:
    dedup = MemoryDedup()
    queue = Queue(dedup)
    ingest = Ingestor(Settings(redis_url=None), dedup, queue.one, lambda r: None)
    msg = order_message(control_id="E1", reason="^thigh mass")
    [ack], remember = ingest.handle_batch_early([msg])
    assert queue.calls == [[msg]] and ack_fields(ack or b"") == ("AA", "E1")
    assert not dedup._acks
    remember()
    assert ingest.handle(msg) == ack and queue.calls == [[msg]]  # the resend: same ACK


def test_acks_for_resends_go_in_the_queueing_transaction() -> None:
    from worker.journal import Journal, journaled_direct

    client = fakeredis.FakeRedis()
    store = RedisStore(client)
    dedup = RedisDedup(store)
    enqueue = journaled_direct(
        Journal(client),
        "ordercheck.validate_batch",
        "q",
        60,
        record_acks=lambda pipe, acks: store.queue_dedup_set_many(pipe, acks, 3600),
    )
    ingest = Ingestor(
        Settings(redis_url=None),
        dedup,
        lambda d, a: None,
        lambda r: None,
        enqueue_with_acks=enqueue,
    )
    msgs = [order_message(control_id=f"T{n}", reason="^thigh mass") for n in range(3)]
    replies, remember = ingest.handle_batch_early(msgs)
    assert client.llen("q") == 1  # one task for the batch
    assert remember is nothing_to_remember  # recorded with the queueing
    assert len(client.keys("oc:dedup:*")) == 3
    again = ingest.handle_batch(msgs)
    assert None not in again and None not in replies
    assert sorted(a for a in again if a) == sorted(a for a in replies if a)  # resends: same ACKs
    assert client.llen("q") == 1  # and not queued again

    class Down:
        def pipeline(self, transaction: bool = True) -> Any:
            raise ConnectionError("broker down")

    refused = Ingestor(
        Settings(redis_url=None),
        dedup,
        lambda d, a: None,
        lambda r: None,
        enqueue_with_acks=journaled_direct(Journal(Down()), "t", "q", 60),
    )
    other = order_message(control_id="T9", reason="^thigh mass")
    [reply] = refused.handle_batch([other])
    assert ack_fields(reply or b"")[0] == "AR"
    assert len(client.keys("oc:dedup:*")) == 3  # nothing recorded for the refused one


class Silent(Recorder):
    """An ordering system that takes the connection and never answers (each send times out).
    The first *together* sends wait for each other: they are in flight at the same time."""

    def __init__(self, together: int = 1) -> None:
        super().__init__()
        self.meet = threading.Barrier(together, timeout=10) if together > 1 else None
        self.lock = threading.Lock()

    def send(self, route: Route, message: bytes, control_id: str) -> DeliveryOutcome:
        with self.lock:
            self.sent.append(message)
            first = len(self.sent) <= (self.meet.parties if self.meet else 0)
        if first and self.meet is not None:
            self.meet.wait()
        return DeliveryOutcome(False, "TimeoutError: no ACK", "127.0.0.1:9")


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_destination_that_failed_is_not_tried_again_in_the_same_batch(
    knowledge: Knowledge, concurrency: int
) -> None:
    """A silent ordering system costs a batch one ACK timeout: one send, or with concurrent
    deliveries the first few at once (they wait for each other here), then none."""
    client = fakeredis.FakeRedis()
    settings = Settings(redis_url=None, delivery_concurrency=concurrency)
    stores = Stores(settings, client)
    store = stores.store
    publisher = Silent(together=concurrency)
    retries: list[tuple[str, int, float]] = []
    processor = Processor(
        settings,
        knowledge,
        stores,
        publisher,  # type: ignore[arg-type]
        lambda i, a, d: retries.append((i, a, d)),
    )
    batch = [
        order_message(
            control_id=f"D{n}",
            placer=f"PD{n}",
            patient_id=f"D{n}^^^H^MR",
            reason="^Left thigh mass 6 cm deep",
        )
        for n in range(6)
    ]
    ids, failed = processor.process_batch([(m, time.time()) for m in batch])
    assert not failed and len(ids) == 6
    assert len(publisher.sent) == concurrency  # in flight at once; the rest are not tried
    tried = {peek_msh(m).control_id for m in publisher.sent}
    by_id = {i: a for i, a, _ in retries}
    assert len(by_id) == 6  # every advisory has a retry scheduled
    for rec_id in ids:
        record = store.get(rec_id)
        assert record is not None and record.delivery == "pending"
        if record.raw_out.split("|")[9] in tried:  # MSH-10 of one that was sent
            assert record.delivery_attempts == 1 and by_id[rec_id] == 2
        else:  # not tried: the retry is its first attempt
            assert record.delivery_attempts == 0 and by_id[rec_id] == 1
            assert "not tried" in record.delivery_error
    # a retry task (no batch) does try again
    publisher.sent.clear()
    publisher.meet = None
    other = next(i for i in ids if by_id[i] == 1)
    processor.deliver(other, 1)
    assert len(publisher.sent) == 1


@pytest.mark.parametrize(
    "patterns",
    [
        [r"\bmass(?:es)?\b", r"sarcomas?\b", r"\blumps?\b", r"\bfoo|bar", r"\(l\)", r"\bl\b"],
        [r"\bleft\b", r"\blt\.", r"\b(?:l|lt)\s*(?=thigh)", r"\(l\)", r"\blft\b"],
        [r"[|(]x", r"\by\b", r"[\]|]z"],
    ],
)
def test_term_lists_compile_to_the_same_matches_with_a_shared_word_boundary(
    patterns: list[str],
) -> None:
    """compile_terms shares one \\b among consecutive anchored patterns of a mixed list (a
    scan ten times faster); what it matches, and where, stays that of the plain alternation."""
    from worker.guideline import compile_terms

    plain = re.compile("|".join(f"(?:{p})" for p in patterns))
    fast = compile_terms(patterns, "test")
    assert fast.pattern != plain.pattern
    texts = [
        "liposarcoma of the (l) thigh, lumps",
        "l thigh mass",
        "left lt. lft",
        "foo bar",
        "xfoo barx",
        "a|x (x y ]z |z",
        "masses, no lump",
        "ltthigh (L) l",
        "clumps of a bleft, al thigh",
        "gyl theft, xy",
    ]  # mid-word: no boundary
    for text in texts:
        assert [m.span() for m in fast.finditer(text)] == [m.span() for m in plain.finditer(text)]


def test_publisher_opens_a_connection_per_send_at_once_and_reuses_them() -> None:
    """Sends at the same time each get a connection; later sends reuse them; after the
    ordering system restarts, one failed send drops every stale connection."""
    from tests.support import FakeOrderingSystem
    from worker.publish import Publisher

    ris = FakeOrderingSystem(keep=False).start()
    try:
        publisher = Publisher(Settings(redis_url=None, advisory_ack_timeout=5.0))
        route = Route(host="127.0.0.1", port=ris.port)

        def message(n: int) -> bytes:
            return f"MSH|^~\\&|OC|H|RIS|H|20260101||ORU^R01|C{n}|P|2.5.1\rPID|||1\r".encode()

        ris.delay = 0.2  # the two sends overlap
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda n: publisher.send(route, message(n), f"C{n}"), [1, 2]))
        assert all(o.ok for o in outcomes)
        assert ris.connection_count == 2
        ris.delay = 0.0
        assert all(publisher.send(route, message(n), f"C{n}").ok for n in range(3, 8))
        assert ris.connection_count == 2  # reused, none opened
        ris.stop()
        ris.start()
        first, second = (publisher.send(route, message(n), f"C{n}") for n in (8, 9))
        assert not first.ok  # a stale connection
        assert second.ok  # the other stale one was closed with it: a new connection
        assert ris.connection_count == 1
        publisher.close()
    finally:
        ris.stop()


def test_freed_heap_memory_goes_back_to_the_system() -> None:
    """Blocks freed below a live one stay in glibc's heap (RSS does not fall) until
    release_free_memory() returns their pages: the listener's slow RSS creep."""
    from tests.support import rss_kb
    from worker.serve import release_free_memory

    if not release_free_memory():
        pytest.skip("no malloc_trim in this C library")
    blocks = [bytes(2048) + i.to_bytes(4, "little") for i in range(40_000)]  # ~80 MiB, malloc'd
    pinned = bytes(2048) + b"pin"  # allocated after them: the heap cannot shrink from the top
    del blocks
    before = rss_kb(os.getpid())
    assert release_free_memory()
    after = rss_kb(os.getpid())
    assert before - after > 40 * 1024, (before, after)
    assert pinned.endswith(b"pin")
