"""One module per `ordercheck` sub-command; each registers its parser here."""

from __future__ import annotations

import argparse
from importlib import import_module

# Modules with a register(sub) function, added as their commands land.
_COMMANDS: tuple[str, ...] = (
    "demo",
    "serve",
    "send",
    "advisories",
    "replay",
    "flags",
    "review",
    "purge",
    "deadletters",
    "cds",
)


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in _COMMANDS:
        import_module(f"worker.commands.{name}").register(sub)
