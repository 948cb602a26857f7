"""`ordercheck replay [--json] [--no-progress] FILE...`: archived HL7 through the rules, a summary.

Runs every message of the files through the same pipeline as `check` (one `Checker`, one
bounded in-memory patient history shared across the files, in order) and sends nothing. Files
are read in chunks and split as they stream (`worker.hl7.parse.iter_messages`), so a day of
messages (hundreds of thousands) runs in flat memory. A progress bar goes to standard error when
it is a terminal; it follows the messages checked (their bytes, of the files' total size), not
the bytes read ahead. The summary: messages, orders, in scope, verdicts, flags and advice by rule,
flags by ordering provider (top 20), rejected messages; `--json` prints it as one JSON object.
Exit 0 when every file was read, 2 when one could not be (the others are still replayed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from worker.check import Checker, MessageOutcome
from worker.commands.check import offline_checker
from worker.hl7.parse import ByteStream, iter_messages
from worker.settings import Settings

TOP_PROVIDERS = 20
CHUNK_BYTES = 1 << 20  # read size
MAX_MESSAGE_BYTES = 64 << 20  # a "message" larger than this is counted rejected, not kept
VERDICTS = ("appropriate", "not-appropriate", "no-criteria-apply")


@dataclass(slots=True)
class ReplaySummary:
    """Counts over every message replayed. Orders are ORC/OBR groups of order messages."""

    files: list[str] = field(default_factory=list)
    messages: int = 0
    orders: int = 0
    in_scope: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # of orders
    flags_by_rule: Counter[str] = field(default_factory=Counter)
    advice_by_rule: Counter[str] = field(default_factory=Counter)
    flags_by_provider: Counter[str] = field(default_factory=Counter)
    rejected: int = 0  # messages that could not be read (oversized ones included)
    oversized: int = 0  # messages larger than MAX_MESSAGE_BYTES
    not_orders: int = 0  # readable messages that hold no order (results, ACKs, ...)
    unreadable_files: int = 0
    seconds: float = 0.0
    bytes_checked: int = 0  # bytes of the messages checked so far (drives the progress bar)

    def add(self, outcome: MessageOutcome) -> None:
        self.messages += 1
        if outcome.error is not None:
            self.rejected += 1
            return
        if not outcome.orders:
            self.not_orders += 1
            return
        for result in outcome.results:
            self.orders += 1
            self.in_scope += result.in_scope
            self.verdicts[result.verdict] += 1
            for flag in result.flags:
                self.flags_by_rule[flag.code] += 1
                self.flags_by_provider[result.ordering_provider or "(not stated)"] += 1
            for advice in result.advice:
                self.advice_by_rule[advice.code] += 1

    def add_oversized(self) -> None:
        self.messages += 1
        self.rejected += 1
        self.oversized += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "messages": self.messages,
            "orders": self.orders,
            "in_scope": self.in_scope,
            "verdicts": {v: self.verdicts.get(v, 0) for v in VERDICTS},
            "flags_by_rule": dict(self.flags_by_rule.most_common()),
            "advice_by_rule": dict(self.advice_by_rule.most_common()),
            "flags_by_provider": dict(self.flags_by_provider.most_common(TOP_PROVIDERS)),
            "rejected": self.rejected,
            "oversized": self.oversized,
            "not_orders": self.not_orders,
            "unreadable_files": self.unreadable_files,
            "seconds": round(self.seconds, 3),
        }


class Replayer:
    """Feeds streams of HL7 through one Checker and counts the outcomes in `summary`.

    on_message: called after each message with the summary (progress, benchmarks).
    """

    def __init__(
        self, checker: Checker, on_message: Callable[[ReplaySummary], None] | None = None
    ) -> None:
        self.checker = checker
        self.summary = ReplaySummary()
        self._on_message = on_message

    def run_stream(self, stream: ByteStream, label: str) -> None:
        started = time.perf_counter()
        try:
            for line, data in iter_messages(stream, CHUNK_BYTES, MAX_MESSAGE_BYTES):
                self.summary.bytes_checked += len(data)
                if data:
                    self.summary.add(self.checker.check_message(data, line, f"{label}:{line}"))
                else:
                    self.summary.add_oversized()
                if self._on_message is not None:
                    self._on_message(self.summary)
        finally:
            self.summary.seconds += time.perf_counter() - started


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="run archived HL7 files through the rules and print a summary",
        description="Run every message of the files through the rules (nothing is sent), "
        "sharing one in-memory patient history, and print the counts a quality team needs "
        "before going live: orders, in scope, verdicts, flags and advice by rule, flags by "
        "ordering provider, rejected messages. Files are streamed: a day of messages runs in "
        "flat memory. Exit 0 when every file was read, 2 when one could not be.",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only when standard error is a terminal)",
    )
    p.add_argument("paths", nargs="+", metavar="FILE", help="HL7 file ('-' for standard input)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return run_replay(
        args.paths, as_json=args.json, progress=not args.no_progress and sys.stderr.isatty()
    )


def run_replay(
    paths: list[str],
    *,
    as_json: bool = False,
    progress: bool = False,
    settings: Settings | None = None,
    out: TextIO | None = None,
) -> int:
    settings = settings or Settings()
    out = out or sys.stdout
    checker = offline_checker(settings)
    if checker is None:
        return 2
    status = 0
    with _progress(paths, progress) as bar:
        replayer = Replayer(checker, bar.on_message if bar else None)
        for path in paths:
            label = "<stdin>" if path == "-" else path
            try:
                with _open(path) as stream:
                    replayer.run_stream(stream, label)
            except OSError as exc:
                print(f"ordercheck: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
                replayer.summary.unreadable_files += 1
                status = 2
                continue
            finally:
                if bar:
                    bar.file_done(path, replayer.summary)
            replayer.summary.files.append(label)
    summary = replayer.summary
    if as_json:
        out.write(json.dumps(summary.as_dict(), ensure_ascii=False) + "\n")
    else:
        render_summary(summary, out)
    out.flush()
    return status


@contextmanager
def _open(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as stream:
        yield stream


class ReplayProgress:
    """A rich progress bar on standard error that follows the messages checked.

    Its position is the bytes of the messages checked so far, out of the files' total size
    (files are read a megabyte ahead: the bytes read would run ahead of the work); at the end of
    each file it lands on that file's end (framing and separators included). The text beside it
    counts messages.
    """

    EVERY = 100  # messages between two updates of the bar

    def __init__(self, paths: list[str], console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.sizes: dict[str, int] = {}
        for path in paths:
            with suppress(OSError):
                self.sizes[path] = Path(path).stat().st_size if path != "-" else 0
        total = sum(self.sizes.values())
        self.bar = Progress(
            TextColumn("replay"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[msgs]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task("replay", total=total or None, msgs="0 messages")
        self._slack = 0  # file bytes outside messages (framing, separators), of finished files

    @property
    def completed(self) -> float:
        return float(self.bar.tasks[0].completed)

    def on_message(self, summary: ReplaySummary) -> None:
        if summary.messages % self.EVERY == 0:
            self._show(summary)

    def file_done(self, path: str, summary: ReplaySummary) -> None:
        """A file is finished: the bar lands on its end."""
        done = sum(size for p, size in self.sizes.items() if p in summary.files or p == path)
        self._slack = max(0, done - summary.bytes_checked)
        self._show(summary)

    def _show(self, summary: ReplaySummary) -> None:
        self.bar.update(
            self.task,
            completed=summary.bytes_checked + self._slack,
            msgs=f"{summary.messages:,} messages",
        )


@contextmanager
def _progress(paths: list[str], enabled: bool) -> Iterator[ReplayProgress | None]:
    """The progress bar (started and stopped around the run), or None when disabled."""
    if not enabled:
        yield None
        return
    progress = ReplayProgress(paths)
    with progress.bar:
        yield progress


def render_summary(summary: ReplaySummary, out: TextIO) -> None:
    """The summary as tables (plain text when *out* is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, highlight=False, soft_wrap=False)
    totals = Table(title="Replay", show_header=False)
    totals.add_column("what")
    totals.add_column("count", justify="right")
    # Indented rows add up to the row above them: messages = with an order + without + rejected;
    # orders = the verdicts. In scope is a share of the orders, on a line of its own.
    verdicts = [*VERDICTS, *sorted(v for v in summary.verdicts if v not in VERDICTS)]
    rows: list[tuple[str, int]] = [
        ("files", len(summary.files)),
        ("messages", summary.messages),
        ("  with an order", summary.messages - summary.not_orders - summary.rejected),
        ("  without an order", summary.not_orders),
        ("  rejected", summary.rejected),
    ]
    if summary.oversized:
        rows.append((f"    of which larger than {MAX_MESSAGE_BYTES >> 20} MiB", summary.oversized))
    rows += [
        ("orders (ORC/OBR groups), by verdict", summary.orders),
        *((f"  {v}", summary.verdicts.get(v, 0)) for v in verdicts),
        ("orders in scope of the guideline", summary.in_scope),
    ]
    if summary.unreadable_files:
        rows.append(("unreadable files", summary.unreadable_files))
    for label, count in rows:
        totals.add_row(label, f"{count:,}")
    console.print(totals)
    for title, counts, limit in (
        ("Flags by rule", summary.flags_by_rule, None),
        ("Advice by rule", summary.advice_by_rule, None),
        (
            f"Flags by ordering provider (top {TOP_PROVIDERS})",
            summary.flags_by_provider,
            TOP_PROVIDERS,
        ),
    ):
        table = Table(title=title)
        table.add_column("rule" if "rule" in title else "ordering provider")
        table.add_column("count", justify="right")
        for key, count in counts.most_common(limit):
            table.add_row(key, f"{count:,}")
        if not counts:
            table.add_row("(none)", "0")
        console.print(table)
    rate = summary.messages / summary.seconds if summary.seconds else 0.0
    console.print(
        f"{summary.messages:,} messages in {summary.seconds:.1f} s ({rate:,.0f} messages/s)"
    )
