"""`ordercheck send FILE... --host H --port P`: send HL7 messages over MLLP, print each ACK."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from worker.hl7.ack import ack_fields
from worker.hl7.mllp import MLLPClient, MLLPError
from worker.hl7.parse import peek_msh, split_messages


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="send HL7 files over MLLP and print each ACK",
        description="Send every message of the files, in order, on one MLLP connection, and "
        "print the ACK of each. ACK messages in a file are skipped (nobody answers an ACK). "
        "Exit 0 when every message was accepted (AA/CA), 1 when one was not or got no ACK, "
        "2 when a file could not be read or the connection could not be made.",
    )
    p.add_argument("paths", nargs="+", metavar="FILE", help="HL7 file (CR, LF or CRLF segments)")
    p.add_argument("--host", default="127.0.0.1", help="listener address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=2575, help="listener port (default 2575)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the connection and for each ACK (default 10)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    status = 0
    try:
        client = MLLPClient(args.host, args.port, connect_timeout=args.timeout)
        client.connect()
    except (MLLPError, OSError) as exc:
        print(f"ordercheck: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    with client:
        for path in args.paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                print(f"ordercheck: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
                status = 2
                continue
            for line, message in split_messages(data):
                head = peek_msh(message)
                if head.message_type.upper().startswith("ACK"):
                    print(f"{path}:{line} {head.control_id or '?'}: skipped (an ACK)")
                    continue
                payload = message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip() + b"\r"
                started = time.perf_counter()
                try:
                    reply = client.send(payload, timeout=args.timeout)
                except MLLPError as exc:
                    print(f"{path}:{line} {head.control_id or '?'}: no ACK ({exc})")
                    status = 1
                    client.close()
                    continue
                ms = (time.perf_counter() - started) * 1000
                code, control = ack_fields(reply)
                print(
                    f"{path}:{line} {head.control_id or '?'}: {code or '?'} "
                    f"(MSA-2 {control or '-'}, {ms:.1f} ms)"
                )
                if code not in ("AA", "CA"):
                    status = max(status, 1)
    return status
