#!/usr/bin/env python3
"""Bootstrap for a fresh machine that has only Python 3.11+: creates .venv, installs, runs.

    python3 dev.py demo    the whole flow on the embedded default (no Redis needed): listener,
                           worker and a fake ordering system, fed the sample orders over MLLP
    python3 dev.py test    lint, type-check and run the quick tests (all but the slow end-to-end
                           and browser ones); with --all every test (what CI runs)
    python3 dev.py serve   run the MLLP listener and workers (embedded unless
                           ORDERCHECK_REDIS_URL is set)

Standard library only. Extra arguments after the command go to the tool it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ORDERCHECK_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
QUICK = "not slow and not browser"  # the tests `dev.py test` runs without --all (pytest -m)


def run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if code:
        sys.exit(code)


def ensure(extra: str) -> None:
    """Create the virtual environment and install the project (with *extra*) when needed."""
    if not PY.exists():
        print(f"creating {VENV.name}/", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extra or 'base'}"
    inputs = [p for p in (ROOT / "pyproject.toml", ROOT / "constraints.txt") if p.exists()]
    if stamp.exists() and all(stamp.stat().st_mtime >= p.stat().st_mtime for p in inputs):
        return
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    target = f".[{extra}]" if extra else "."
    pins = ["-c", "constraints.txt"] if (ROOT / "constraints.txt").exists() else []
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins, "-e", target)
    stamp.touch()


def main(argv: list[str]) -> None:
    if sys.version_info[:2] < (3, 11):  # noqa: UP036 - the point of this script is to say so
        sys.exit(f"ordercheck needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    command, rest = (argv[0], argv[1:]) if argv else ("demo", [])
    if command == "demo":
        ensure("")
        run(BIN / "ordercheck", "demo", *rest)
    elif command == "test":
        ensure("test")
        everything = "--all" in rest
        rest = [a for a in rest if a != "--all"]
        quick = [] if everything else ["-m", QUICK]
        run(BIN / "ruff", "check", "worker", "tests", "bench", "dev.py")
        run(BIN / "ruff", "format", "--check", "worker", "tests", "bench", "dev.py")
        run(BIN / "mypy")
        run(PY, "-m", "pytest", *quick, *rest)
    elif command == "serve":
        ensure("")
        run(BIN / "ordercheck", "serve", *rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
