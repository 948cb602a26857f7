"""shared/peer-corpus (300 HL7 files from 14 other projects, SOURCES.md) through `ordercheck
check` and through the listener: never a traceback, never a flag, every rejection with a reason;
every ACK parses and its MSA-2 is the message's MSH-10, exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.support import Serve
from worker.cli import main
from worker.hl7.batch import is_batch, split_batch
from worker.hl7.escape import Delimiters
from worker.hl7.parse import parse_message, peek_msh, split_messages

CORPUS = SHARED / "peer-corpus"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared/ not beside the repo")


def _files() -> list[Path]:
    def number(p: Path) -> tuple[str, int]:
        return p.parent.name, int(re.sub(r"\D", "", p.stem) or 0)

    return sorted(CORPUS.glob("*/*.hl7"), key=number)


def test_check_reads_the_whole_peer_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    files = _files()
    assert len(files) >= 300
    code = main(["check", "--json", *map(str, files)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "Traceback" not in captured.err
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert {Path(r["source"].rsplit(":", 1)[0]) for r in results} == set(files)
    flagged = [(r["source"], [f["code"] for f in r["flags"]]) for r in results if r["flags"]]
    assert flagged == []  # a false flag is the worst error: none on other projects' samples
    for r in results:
        if r["verdict"] == "rejected":
            assert r["error"] and len(r["error"].split(": ", 1)[-1]) > 10, r
        else:
            assert r["error"] is None


def _answers(reply: bytes) -> list[tuple[str, str]]:
    """(MSA-1, MSA-2 unescaped) of each ACK in a reply (one ACK or a batch of them)."""
    out = []
    for seg in reply.split(b"\r"):
        if seg.startswith(b"MSA|"):
            fields = seg.decode("utf-8").split("|")
            out.append((fields[1], Delimiters().decode(fields[2]) if len(fields) > 2 else ""))
    return out


def _wants_reply(message: bytes) -> bool:
    head = peek_msh(message)
    if head.message_type.startswith("ACK"):
        return False
    first = message.lstrip(b"\x0b \r\n").split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(first[3:4]) if len(first) > 3 else []
    mode = fields[14].decode("latin-1").strip().upper() if len(fields) > 14 else ""
    return mode not in ("NE", "ER", "SU")


@pytest.mark.slow
def test_the_peer_corpus_through_the_listener() -> None:
    """Each message as its own frame (a batch file as one frame): every ACK parses, and MSA-2
    is the MSH-10 sent (unescaped on both sides: the value, exactly)."""
    serve = Serve({}).start()
    sent = 0
    try:
        with serve.client() as client:
            for path in _files():
                data = path.read_bytes()
                batch = split_batch(data) if is_batch(data) else None
                frames = [data] if batch is not None else [m for _, m in split_messages(data)]
                for frame in frames:
                    messages = batch.messages if batch is not None else [frame]
                    wanted = [m for m in messages if _wants_reply(m)]
                    if batch is None and not wanted:
                        continue  # an ACK, or MSH-15 asks for no answer
                    reply = client.send(frame, timeout=10)
                    sent += 1
                    acks = [parse_message(m) for _, m in split_messages(reply)]
                    assert all(a.msh.get(9).startswith("ACK") for a in acks), path
                    got = [control for _, control in _answers(reply)]
                    assert len(got) == len(acks), path
                    # In order, one per message; a message whose MSH-15 asks for no answer may
                    # still get one when it is refused unread (its MSH-15 is not trusted then).
                    controls = iter((peek_msh(m).exact_control_id, m in wanted) for m in messages)
                    for control in got:
                        for sent_control, must in controls:
                            if sent_control == control:
                                break
                            assert not must, (path, control, sent_control)
                        else:
                            raise AssertionError((path, "MSA-2 matches no MSH-10", control))
                    assert all(not must for _, must in controls), path
    finally:
        serve.stop()
    assert sent >= 300
