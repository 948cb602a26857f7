"""`ordercheck demo`: the whole flow on the embedded default, in one process, on loopback.

Starts the listener and worker (no Redis), a fake ordering system, sends the sample orders
over MLLP, and prints each ACK and the advisory the ordering system received.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient
from worker.hl7.parse import peek_msh, split_messages
from worker.settings import Settings

SEEDS = Path(__file__).resolve().parent.parent.parent / "seeds"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run listener, worker and a fake ordering system on the "
        "sample orders (embedded, no Redis)",
    )
    p.add_argument("paths", nargs="*", metavar="FILE", help="HL7 files (default: seeds/*.hl7)")
    p.set_defaults(handler=run)


def _rating(advisory: bytes) -> str:
    for seg in advisory.split(b"\r"):
        if seg.startswith(b"OBX|") and b"76515-6" in seg:
            return seg.split(b"|")[5].split(b"^")[0].decode()
    return "?"


def _flags(advisory: bytes) -> str:
    codes = [
        seg.split(b"|")[5].split(b":")[0].decode()
        for seg in advisory.split(b"\r")
        if seg.startswith(b"OBX|") and b"|FLAG^" in seg
    ]
    return ", ".join(codes)


def run(args: argparse.Namespace) -> int:
    from worker.serve import Service
    from worker.testing import FakeOrderingSystem

    # The sample orders of a checkout; an installed package has none: those of the current
    # directory's seeds/, else the files given.
    paths = (
        [Path(p) for p in args.paths]
        or sorted(SEEDS.glob("*.hl7"))
        or sorted((Path.cwd() / "seeds").glob("*.hl7"))
    )
    if not paths:
        print(
            "ordercheck: no HL7 files to send: give some (ordercheck demo FILE ...), or run it "
            "from a checkout, whose seeds/ holds the sample orders",
            file=sys.stderr,
        )
        return 2
    ris = FakeOrderingSystem().start()
    settings = Settings(
        redis_url=None,
        listen_port=0,
        advisory_host="127.0.0.1",
        advisory_port=ris.port,
        delivery_backoff=0.2,
    )

    async def main() -> int:
        service = Service(settings)
        await service.start()
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(None, _send_all, service.port, paths)
        deadline = time.monotonic() + 10
        while service.embedded.queue.qsize() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await service.stop()
        by_placer = {adv.placer: adv.body for adv in ris.advisories()}  # the last one
        print(
            f"\n{len(sent)} messages sent, {len(by_placer)} advisories received by the "
            f"ordering system:\n"
        )
        for placer, adv in by_placer.items():
            flags = _flags(adv)
            print(f"  order {placer:<14} {_rating(adv):<16} {flags}")
        return 0

    try:
        return asyncio.run(main())
    finally:
        ris.stop()


def _send_all(port: int, paths: list[Path]) -> list[str]:
    sent = []
    with MLLPClient("127.0.0.1", port) as client:
        for path in paths:
            for line, message in split_messages(path.read_bytes()):
                head = peek_msh(message)
                if head.message_type.startswith("ACK"):
                    continue  # never expect an ACK for an ACK
                payload = message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip() + b"\r"
                started = time.perf_counter()
                code, _ = ack_fields(client.send(payload, timeout=10))
                ms = (time.perf_counter() - started) * 1000
                print(f"{path.name}:{line} {head.control_id or '?':<10} ACK {code:<2} {ms:5.1f} ms")
                sent.append(head.control_id)
    return sent
