"""Fuzz run: mutated real messages to a running listener; no crash, no hang, memory bounded.

    .venv/bin/python -m bench.fuzz_listener [--inputs 100000] [--connections 8] [--seed 1]
        [--mode redis|embedded] [--timeout 10] [--max-growth-mib 64]

Starts `ordercheck serve` (tests.support.Serve) with no advisory destination: by default in Redis
mode on a redis-server of its own (no persistence), one Celery worker process, so the listener's
RSS is the listener's alone; --mode embedded runs everything in one process, whose in-memory
advisory store keeps every accepted message (huge fields included) and so grows by design.
Then it feeds --inputs
messages made from the seeds (seeds/*.hl7) by `mutate`: bit flips, truncation, delimiter swaps,
inserted 0x0B/0x1C/CR/NUL, huge fields (some beyond the 1 MiB frame limit), random segments,
segments deleted/duplicated/shuffled, random bytes, odd MSH-9/11/12/15/16/18 values, invalid
UTF-8. Nine in ten get a fresh MSH-10 first (the rest exercise the resend table).

Each input goes out framed, followed on the same connection by a probe frame (a QRY^Q01, which
the listener refuses with AR and MSA-2 = the probe's MSH-10). Frames on one connection are
answered in order, so the replies before the probe's are the input's: none (an ACK, MSH-15 NE,
junk), one, or several (a mutation that split the frame). No probe answer within --timeout
seconds is a hang; a closed connection is counted and reopened. At the end a valid order on a
new connection must get AA (no crash), and the listener's RSS after the run must not exceed its
RSS after the first 5 % of the inputs by more than --max-growth-mib.

Prints inputs tried, answers by MSA-1 code, crashes, hangs, closed connections, RSS.
Exit status 0 when crashes and hangs are 0 and memory stayed bounded.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import RedisServer, make_order
from tests.support import HOST, Serve
from worker.hl7.ack import ack_fields
from worker.hl7.mllp import FrameDecoder, FrameError, frame
from worker.hl7.parse import split_messages

ROOT = Path(__file__).resolve().parent.parent
DELIMITERS = b"|^~\\&\r"
MSH_VALUES = {
    9: [
        b"",
        b"ACK",
        b"ACK^O01",
        b"ORM^O01",
        b"ORU^R01",
        b"OMI^O23",
        b"ADT^A01",
        b"ORM",
        b"ORM^O01^ORM_O01",
        b"^O01",
        b"ORM^^",
        b"orm^o01",
    ],
    11: [b"", b"P", b"T", b"D", b"X", b"P^A"],
    12: [b"", b"2.5.1", b"2.3", b"2.1", b"9.9", b"2.5.1^DEU", b"v2"],
    15: [b"", b"AL", b"NE", b"ER", b"SU", b"XX"],
    16: [b"", b"AL", b"NE", b"ER", b"SU"],
    18: [b"", b"UNICODE UTF-8", b"8859/1", b"ASCII", b"UTF-16", b"KLINGON"],
}
INVALID_BYTES = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xe2\x82", b"\x80"]


def seed_messages(root: Path = ROOT) -> list[bytes]:
    """Every message of seeds/*.hl7, as found (CR, LF or CRLF segment ends)."""
    out: list[bytes] = []
    for path in sorted((root / "seeds").glob("*.hl7")):
        out += [m for _, m in split_messages(path.read_bytes()) if m.strip()]
    return out


def _segments(data: bytes) -> list[bytes]:
    return re.split(rb"\r\n|\r|\n", data)


def _set_msh_field(data: bytes, n: int, value: bytes) -> bytes:
    segs = _segments(data)
    if not segs or not segs[0].startswith(b"MSH") or len(segs[0]) < 4:
        return data
    sep = segs[0][3:4]
    fields = segs[0].split(sep)
    index = n - 1  # fields[0] is "MSH", fields[1] MSH-2: MSH-n is fields[n - 1]
    while len(fields) <= index:
        fields.append(b"")
    fields[index] = value
    segs[0] = sep.join(fields)
    return b"\r".join(segs)


def set_control_id(data: bytes, control_id: str) -> bytes:
    """*data* with MSH-10 replaced (unchanged when there is no MSH to change)."""
    return _set_msh_field(data, 10, control_id.encode())


def mutate(message: bytes, rng: random.Random) -> bytes:
    """One to three random mutations of *message* (see the module docstring)."""
    data = bytearray(message)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(11)
        n = len(data)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncation
            del data[rng.randrange(n + 1) :]
        elif op == 2:  # delimiter swap, one occurrence or all
            a, b = rng.sample(DELIMITERS, 2)
            if rng.random() < 0.5:
                data = bytearray(bytes(data).replace(bytes([a]), bytes([b])))
            else:
                hits = [i for i, c in enumerate(data) if c == a]
                if hits:
                    data[rng.choice(hits)] = b
        elif op == 3:  # framing and control bytes inside the payload
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data) + 1) : 0] = rng.choice(
                    (b"\x0b", b"\x1c", b"\x1c\r", b"\r", b"\n", b"\x00")
                )
        elif op == 4:  # a huge field (some beyond the frame limit)
            size = rng.choices(
                (500, 5_000, 50_000, 300_000, 1_100_000), weights=(50, 30, 15, 4, 1)
            )[0]
            pipes = [i for i, c in enumerate(data) if c == ord("|")] or [n]
            at = rng.choice(pipes) + 1
            data[at:at] = rng.choice((b"A", b"X9", b"^", b"&~", b"\\E\\")) * (size // 2 + 1)
        elif op == 5:  # a random segment
            seg = rng.choice(
                (
                    b"ZZZ|",
                    b"PID|",
                    b"OBR|",
                    b"ORC|",
                    b"MSH|",
                    b"OBX|",
                    b"NTE|",
                    b"MSA|",
                    b"DG1|",
                    b"",
                    b"|",
                )
            )
            seg += bytes(rng.randrange(32, 127) for _ in range(rng.randrange(200)))
            segs = _segments(bytes(data))
            segs.insert(rng.randrange(len(segs) + 1), seg)
            data = bytearray(b"\r".join(segs))
        elif op == 6:  # delete, duplicate or shuffle segments
            segs = _segments(bytes(data))
            how = rng.randrange(3)
            if how == 0 and segs:
                del segs[rng.randrange(len(segs))]
            elif how == 1 and segs:
                i = rng.randrange(len(segs))
                segs[i:i] = [segs[i]] * rng.randint(1, 50)
            else:
                rng.shuffle(segs)
            data = bytearray(b"\r".join(segs))
        elif op == 7 and n:  # random bytes over a slice
            i = rng.randrange(n)
            length = rng.randint(1, 64)
            data[i : i + length] = rng.randbytes(length)
        elif op == 8:  # odd MSH values
            key = rng.choice(list(MSH_VALUES))
            data = bytearray(_set_msh_field(bytes(data), key, rng.choice(MSH_VALUES[key])))
        elif op == 9:  # invalid UTF-8, NUL
            data[rng.randrange(len(data) + 1) : 0] = rng.choice(INVALID_BYTES)
        elif op == 10 and rng.random() < 0.1:  # (rarely) nothing at all
            data = bytearray(rng.choice((b"", b"\r", b"   ", b"MSH", b"MSH|")))
    return bytes(data)


def probe(tag: str) -> bytes:
    """A message the listener refuses at once (AR, unsupported type) with MSA-2 = *tag*."""
    return (
        f"MSH|^~\\&|FUZZ|FUZZ|ORDERCHECK|ORDERCHECK|20260101000000||QRY^Q01|{tag}|P|2.5\r"
    ).encode()


@dataclass
class FuzzReport:
    inputs: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # MSA-1 -> count; "none", "junk"
    several: int = 0  # inputs that got more than one answer (the mutation split the frame)
    closed: int = 0  # connections the server closed
    hangs: int = 0
    crashes: int = 0
    final_ack: str = ""
    seconds: float = 0.0
    rss_kb: dict[str, int] = field(default_factory=dict)
    max_growth_kb: int = 0

    @property
    def growth_kb(self) -> int:
        return self.rss_kb.get("end", 0) - self.rss_kb.get("warm", 0)

    @property
    def ok(self) -> bool:
        return (
            not self.crashes
            and not self.hangs
            and self.final_ack in ("AA", "CA")
            and self.growth_kb <= self.max_growth_kb
        )

    def lines(self) -> list[str]:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        rss = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in self.rss_kb.items())
        return [
            f"inputs tried       {self.inputs} in {self.seconds:.1f} s "
            f"({self.inputs / max(self.seconds, 1e-9):.0f}/s)",
            f"answers by MSA-1   {codes}",
            f"several answers    {self.several} inputs (split by an inserted 0x0B/0x1C)",
            f"closed by server   {self.closed}",
            f"crashes            {self.crashes}",
            f"hangs              {self.hangs}",
            f"final valid order  {self.final_ack or 'no answer'}",
            f"listener RSS       {rss}; growth after warm-up {self.growth_kb / 1024:.1f} MiB "
            f"(limit {self.max_growth_kb / 1024:.0f} MiB)",
            "RESULT: " + ("OK" if self.ok else "FAILED"),
        ]


class _Conn:
    """One fuzzing connection: send an input and a probe, read the answers up to the probe's."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder(64 * 1024 * 1024)

    def _open(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
            self.decoder = FrameDecoder(64 * 1024 * 1024)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, payload: bytes, tag: str) -> tuple[str, list[str]]:
        """("ok" | "closed" | "hang", MSA-1 codes of the answers before the probe's)."""
        try:
            sock = self._open()
        except OSError:
            return "closed", []
        codes: list[str] = []
        deadline = time.monotonic() + self.timeout
        try:
            sock.sendall(frame(payload) + frame(probe(tag)))
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    self.close()
                    return "closed", codes
                for event in self.decoder.feed(data):
                    if isinstance(event, FrameError):
                        codes.append("junk")
                        continue
                    code, control = ack_fields(event)
                    if control == tag and code == "AR":
                        return "ok", codes
                    codes.append(code or "no-MSA")
        except TimeoutError:
            self.close()
            return "hang", codes
        except OSError:
            self.close()
            return "closed", codes


def run_fuzz(
    inputs: int = 100_000,
    connections: int = 8,
    seed: int = 1,
    mode: str = "redis",
    timeout: float = 10.0,
    max_growth_mib: float = 64.0,
    log: bool = True,
) -> FuzzReport:
    report = FuzzReport(max_growth_kb=int(max_growth_mib * 1024))
    seeds = seed_messages()
    workdir = Path(tempfile.mkdtemp(prefix="ordercheck-fuzz-"))
    redis: RedisServer | None = None
    serve: Serve | None = None
    lock = threading.Lock()
    counter = iter(range(inputs))
    warm_at = max(1, inputs // 20)

    def say(text: str) -> None:
        if log:
            print(text, file=sys.stderr, flush=True)

    try:
        env = {"ORDERCHECK_LOG_LEVEL": "WARNING"}
        if mode == "redis":
            redis = RedisServer(workdir / "redis", aof=False).start()
            env.update(ORDERCHECK_REDIS_URL=redis.url(0), ORDERCHECK_WORKERS="1")
        serve = Serve(env, workdir / "serve").start()
        report.rss_kb["start"] = serve.rss_kb()
        say(f"fuzz: {inputs} inputs, {connections} connections, {mode} mode, serve pid {serve.pid}")
        started = time.monotonic()

        def worker(k: int) -> None:
            rng = random.Random(seed * 1_000_003 + k)
            conn = _Conn(serve.port if serve else 0, timeout)
            try:
                while True:
                    with lock:
                        n = next(counter, None)
                    if n is None:
                        return
                    message = rng.choice(seeds)
                    if rng.random() < 0.9:
                        message = set_control_id(message, f"FZ{seed}-{n}")
                    status, codes = conn.exchange(mutate(message, rng), f"PROBE{k}-{n}")
                    with lock:
                        report.inputs += 1
                        report.answers.update(codes or ["none"])
                        report.several += len(codes) > 1
                        report.closed += status == "closed"
                        report.hangs += status == "hang"
                        if report.inputs == warm_at and serve is not None:
                            report.rss_kb["warm"] = serve.rss_kb()
                        if report.inputs % 10_000 == 0:
                            say(
                                f"fuzz: {report.inputs} inputs, RSS "
                                f"{(serve.rss_kb() if serve else 0) / 1024:.1f} MiB"
                            )
            finally:
                conn.close()

        threads = [
            threading.Thread(target=worker, args=(k,), daemon=True) for k in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.seconds = time.monotonic() - started
        if not serve.alive():
            report.crashes = 1
        else:
            try:
                with socket.create_connection((HOST, serve.port), timeout=timeout) as sock:
                    conn = _Conn(serve.port, timeout)
                    conn.sock = sock
                    order = make_order(1, run="FUZZEND")
                    status, codes = conn.exchange(order.message, "PROBE-END")
                    report.final_ack = codes[0] if status == "ok" and codes else ""
            except OSError:
                report.final_ack = ""
            if not report.final_ack:
                report.crashes = 1
        report.rss_kb["end"] = serve.rss_kb()
        report.rss_kb["peak"] = serve.rss_kb(peak=True)
    finally:
        if serve is not None:
            serve.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mode", choices=("redis", "embedded"), default="redis")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds for the answers to one input (more is a hang)",
    )
    p.add_argument("--max-growth-mib", type=float, default=64.0)
    a = p.parse_args(argv)
    report = run_fuzz(a.inputs, a.connections, a.seed, a.mode, a.timeout, a.max_growth_mib)
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
