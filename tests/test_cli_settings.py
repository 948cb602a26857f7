"""A wrong setting, an unreachable Redis, a missing option help: one line, exit 2, every
subcommand (issue 11, items 3 and 6)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support import FakeOrderingSystem, free_port
from worker.cli import build_parser, main

SEED = str(ROOT / "seeds" / "01-epic-ct-femur-left.hl7")
SUBCOMMANDS = [
    ["serve"],
    ["check", SEED],
    ["replay", "--no-progress", SEED],
    ["advisories"],
    ["advisories", "--undelivered"],
    ["flags", "list"],
    ["review"],
    ["purge"],
]
WRONG = [
    ("ORDERCHECK_WORKERS", "abc", "ordercheck: ORDERCHECK_WORKERS='abc': not an integer"),
    (
        "ORDERCHECK_LISTEN_PORT",
        "99999",
        "ordercheck: ORDERCHECK_LISTEN_PORT='99999': must be 65535 or less",
    ),
    (
        "ORDERCHECK_ALLOWED_SENDERS",
        "EPIC",
        """ordercheck: ORDERCHECK_ALLOWED_SENDERS='EPIC': not a JSON list """
        """(e.g. '["EPIC", "RIS|RADIOLOGY"]')""",
    ),
    (
        "ORDERCHECK_REDIS_URL",
        "redis://127.0.0.1:6379/abc",
        "ordercheck: ORDERCHECK_REDIS_URL='redis://127.0.0.1:6379/abc': the database 'abc' "
        "is not a number (redis://host:6379/0)",
    ),
    (
        "ORDERCHECK_ADVISORY_FORMAT",
        "xml",
        "ordercheck: ORDERCHECK_ADVISORY_FORMAT='xml': must be one of 'oru' or 'order-echo'",
    ),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for key in list(os.environ):
        if key.startswith("ORDERCHECK_"):
            monkeypatch.delenv(key)
    yield


@pytest.mark.parametrize("name,value,line", WRONG, ids=[w[0] for w in WRONG])
@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=[" ".join(a[:2]) for a in SUBCOMMANDS])
def test_a_wrong_setting_is_one_line_and_exit_2(
    argv: list[str],
    name: str,
    value: str,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_secrets_are_named_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERCHECK_REVIEW_USERS", '{"quality": "s3cret"')
    monkeypatch.setenv("ORDERCHECK_REDIS_URL", "redis://:pa55word@127.0.0.1:6379/x")
    assert main(["flags", "list"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "pa55word" not in err
    assert err.startswith("ordercheck: ORDERCHECK_")
    assert "Traceback" not in err


def test_two_wrong_settings_give_two_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORDERCHECK_WORKERS", "abc")
    monkeypatch.setenv("ORDERCHECK_LISTEN_PORT", "-1")
    assert main(["check", SEED]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "ordercheck: ORDERCHECK_WORKERS='abc': not an integer",
        "ordercheck: ORDERCHECK_LISTEN_PORT='-1': must be 0 or more",
    ]


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import Settings

    monkeypatch.setenv("ORDERCHECK_WORKERS", "")
    monkeypatch.setenv("ORDERCHECK_REDIS_URL", "")
    settings = Settings()
    assert settings.workers is None and settings.redis_url is None


@pytest.mark.parametrize(
    "argv",
    [["advisories"], ["flags", "list"], ["purge"], ["review"], ["advisories", "--resend", "x"]],
)
def test_unreachable_redis_is_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("ORDERCHECK_REDIS_URL", f"redis://127.0.0.1:{port}/1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "note:" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("ordercheck") and f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in err


def test_serve_port_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "99999"])
    assert exc.value.code == 2
    assert "99999 is not a port number" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for sub, subparser in action.choices.items():
                assert helps.get(sub), f"{name} {sub}: no help"
                yield from _options(subparser, f"{name} {sub}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield name, action


def test_every_subcommand_and_option_has_help_and_its_default() -> None:
    missing = []
    for name, action in _options(build_parser(), "ordercheck"):
        label = f"{name} {'/'.join(action.option_strings) or action.dest}"
        if not action.help:
            missing.append(f"{label}: no help")
            continue
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, "", [])
            and "default" not in action.help
        ):
            missing.append(f"{label}: help does not give the default {default!r}")
    assert missing == []


def test_send_skips_ack_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ack = b"MSH|^~\\&|RIS|H|EPIC|H|20260101||ACK^O01|A1|P|2.3\rMSA|AA|X1\r"
    order = (ROOT / "seeds" / "01-epic-ct-femur-left.hl7").read_bytes()
    path = tmp_path / "mixed.hl7"
    path.write_bytes(ack + b"\n" + order)
    ris = FakeOrderingSystem().start()  # answers AA to every frame it gets
    try:
        code = main(["send", str(path), "--port", str(ris.port), "--timeout", "5"])
    finally:
        ris.stop()
    out = capsys.readouterr().out
    assert code == 0
    assert "A1: skipped (an ACK)" in out
    assert "SEED01: AA" in out
    assert ris.count() == 1  # only the order went out


def test_a_bare_install_gets_the_redis_transport_dependencies() -> None:
    """The requirements of ordercheck without extras, followed through every package's own
    requirements (with the extras asked for), reach kombu's Redis transport's imports."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [("ordercheck", frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        key = f"{name.lower()}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            env_extras = extras or {""}
            if req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in env_extras
            ):
                todo.append((req.name, frozenset(req.extras)))
    names = {k.split("[")[0].replace("_", "-") for k in seen}
    assert {"packaging", "redis", "kombu", "celery"} <= names, sorted(names)


def test_constraints_pin_every_runtime_dependency() -> None:
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for text in requires("ordercheck") or []:
        req = Requirement(text)
        if req.marker is None:
            assert req.name.lower() in pins, f"{req.name} is not pinned in constraints.txt"
    assert "packaging" in pins and "kombu" in pins


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_worker_imports_check_names_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.preflight import worker_problem

    assert worker_problem("redis://127.0.0.1:6379/1") is None
    monkeypatch.delitem(sys.modules, "kombu.transport.redis", raising=False)
    monkeypatch.setitem(sys.modules, "packaging", None)
    monkeypatch.setitem(sys.modules, "packaging.version", None)
    problem = worker_problem("redis://127.0.0.1:6379/1")
    assert problem is not None
    assert problem.startswith("the Celery worker cannot start: ModuleNotFoundError")
    assert "packaging" in problem


def test_demo_without_sample_orders_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed package has no seeds/: the demo names what to pass, in one line."""
    from worker.commands import demo

    monkeypatch.setattr(demo, "SEEDS", tmp_path / "no-seeds")
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ordercheck demo FILE" in err
