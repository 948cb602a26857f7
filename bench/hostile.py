"""Hostile input against `ordercheck serve` (embedded mode), issue 13: each attack and what
came of it, printed as a table (bench/RELIABILITY.md, "Hostile input").

    .venv/bin/python -m bench.hostile [--refused 150] [--acks 2000]

Everything runs on 127.0.0.1: a fake ordering system and the listener, started here.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from tests.hl7build import order_message
from tests.support import FakeOrderingSystem, Serve, wait_until
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import frame
from worker.hl7.parse import parse_message, split_messages

HOST = "127.0.0.1"


def clean(data: bytes) -> bool:
    return all(b >= 0x20 and b != 0x7F for b in data.replace(b"\r", b""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--refused", type=int, default=150, help="refused 1 MB frames to send")
    p.add_argument("--acks", type=int, default=2000, help="ACKs with 5,000-char MSH-10 to send")
    args = p.parse_args()
    rows: list[tuple[str, str]] = []
    ris = FakeOrderingSystem().start()
    work = Path(tempfile.mkdtemp(prefix="ordercheck-hostile-"))
    serve = Serve(
        {
            "ORDERCHECK_ADVISORY_HOST": HOST,
            "ORDERCHECK_ADVISORY_PORT": str(ris.port),
            "ORDERCHECK_IDLE_TIMEOUT": "2",
            "ORDERCHECK_ALLOWED_SENDERS": '["EPIC|TESTHOSP", "EPIC|HOSP"]',
            "ORDERCHECK_MAX_FRAME_BYTES": str(2 << 20),
        },
        workdir=work,
    ).start()
    try:
        # 1. control bytes in copied fields
        names = ["DOE\\X1C\\^JOHN", "DOE\\X0B\\MSH#^~\\E\\&#EVIL#X#", "DOE\\X00\\^JOHN"]
        for n, name in enumerate(names):
            msg = order_message(control_id=f"CB{n}", placer=f"PCB{n}", reason="^thigh mass 6 cm")
            serve.send(msg.replace(b"TEST^PATIENT", name.encode()))
        code, _, ack = serve.send(order_message(control_id="CB\\X1C\\", sender="EPIC\\X00\\"))
        wait_until(lambda: len(ris.advisories()) >= len(names), 30, "the advisories")
        whole = [a for a in ris.advisories() if clean(a.body) and a.body.count(b"\rOBX|") >= 2]
        rows.append(
            (
                "PID-5 `DOE\\X1C\\^JOHN`, `DOE\\X0B\\MSH#...`, `DOE\\X00\\`; MSH-3/MSH-10 with "
                "`\\X1C\\` `\\X00\\`",
                f"{len(whole)} of {len(names)} advisories whole, no raw control byte, "
                f"{len(ris.advisories())} frames at the RIS; ACK ({code}, not allowed) "
                f"{'clean' if clean(ack) else 'RAW CONTROL BYTES'}",
            )
        )
        # 2. refused 1 MB frames
        before = serve.rss_kb()
        big = order_message(control_id="BIG", msg_type="ADT^A01") + b"NTE|1||" + b"x" * (1 << 20)
        with serve.client() as c:
            for n in range(args.refused):
                c.send(big.replace(b"|BIG|", f"|BIG{n}|".encode()), timeout=30)
        after = serve.rss_kb()
        rows.append(
            (
                f"{args.refused} refused 1 MB frames (AR 200)",
                f"listener RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB "
                "(8 KB of each kept for review)",
            )
        )
        # 3. one address, many connections
        socks = [socket.create_connection((HOST, serve.port), timeout=5) for _ in range(30)]
        time.sleep(0.5)
        open_ = 0
        for s in socks:
            s.setblocking(False)
            try:
                open_ += s.recv(1) != b""
            except BlockingIOError:  # nothing to read and not closed: open
                open_ += 1
            except OSError:
                pass
        for s in socks:
            s.close()
        rows.append(("30 connections from one address", f"{open_} kept open, the rest closed"))
        # 4. whitespace to keep a connection open
        s = socket.create_connection((HOST, serve.port), timeout=5)
        start = time.monotonic()
        closed_after = None
        for _ in range(100):
            try:
                s.sendall(b"\r\n")
                time.sleep(0.1)
            except OSError:
                closed_after = time.monotonic() - start
                break
        s.close()
        rows.append(
            (
                "CR LF every 0.1 s on an idle connection (idle timeout 2 s)",
                f"closed after {closed_after:.1f} s" if closed_after else "STILL OPEN after 10 s",
            )
        )
        # 5. allow-list bypass
        code, _, _ = serve.send(order_message(control_id="AL1", sender="EPIC\\F\\TESTHOSP"))
        rows.append(("MSH-3 `EPIC\\F\\TESTHOSP` against the entry `EPIC|TESTHOSP`", code))
        # 6. another message under a used control id
        serve.send(order_message(control_id="DUP1", patient_id="P1^^^H^MR"))
        code, _, reply = serve.send(order_message(control_id="DUP1", patient_id="P2^^^H^MR"))
        rows.append(
            (
                "another patient under a used (MSH-3, MSH-4, MSH-10)",
                f"{code} {'205' if b'205^' in reply else ''}",
            )
        )
        # 7. ACKs with 5,000-character control ids: log volume
        log_before = serve.log_path.stat().st_size if serve.log_path else 0
        ack_msg = b"MSH|^~\\&|EPIC|HOSP|OC|OC|2026||ACK^O01|" + b"C" * 5000 + b"|P|2.3\rMSA|AA|X\r"
        with socket.create_connection((HOST, serve.port), timeout=5) as raw:
            for _ in range(args.acks):
                raw.sendall(frame(ack_msg))
            raw.sendall(frame(order_message(control_id="LAST")))
            buf = b""
            while b"LAST" not in buf:
                data = raw.recv(65536)
                if not data:
                    break
                buf += data
        time.sleep(0.5)
        log_after = serve.log_path.stat().st_size if serve.log_path else 0
        rows.append(
            (
                f"{args.acks} ACKs with a 5,000-character MSH-10 (ignored)",
                f"{(log_after - log_before) / 1024:.1f} KiB of log",
            )
        )
        # 8. batch in one frame
        batch = (
            b"FHS|^~\\&|EPIC|HOSP|||2026||||F1\rBHS|^~\\&|EPIC|HOSP|||2026||||B1\r"
            + order_message(control_id="BT1", placer="PBT1")
            + order_message(control_id="BT2", placer="PBT2", patient_id="B2^^^H^MR")
            + b"BTS|2\rFTS|1\r"
        )
        with serve.client() as c:
            reply = c.send(batch, timeout=10)
        acks = [ack_fields(m) for _, m in split_messages(reply)]
        rows.append(("FHS/BHS batch of 2 orders in one frame", f"batch ACK: {acks}"))
        # 9. a line that is not a segment
        junk = order_message(control_id="JL1").replace(b"\rPID|", b"\rjunk\rPID|", 1)
        code, control, reply = serve.send(junk)
        msh12 = parse_message(reply).msh.get(12)
        rows.append(("a junk line after MSH", f"{code} 100 ({control}), our MSH-12 {msh12!r}"))
        # 10. MSA-2 exactly
        code, _, reply = serve.send(order_message(control_id=" LEAD"))
        msa2 = reply.split(b"\r")[1].split(b"|")[2].decode()
        rows.append(("MSH-10 with a leading space", f"{code}, MSA-2 {msa2!r}"))
    finally:
        serve.stop()
        ris.stop()
    width = max(len(a) for a, _ in rows)
    for attack, result in rows:
        print(f"{attack:<{width}}  {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
