"""`ordercheck serve` start-up tells the truth (issue 11, item 2): Redis pinged and the worker's
imports loaded before "listening"; a worker that cannot start, or a port in use, is one line and
a non-zero exit with no Celery worker left behind. Also its output (JSON lines only), the
destination warning, /health and /metrics of the delivery view, the metrics folder's removal."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support import FakeOrderingSystem, Serve, free_port, wait_until
from worker.serve import CeleryWorker, Service, StartupError
from worker.settings import Settings

SEED = ROOT / "seeds" / "01-epic-ct-femur-left.hl7"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
    env.update(ORDERCHECK_LISTEN_HOST="127.0.0.1", ORDERCHECK_WORKERS="1", **extra)
    return env


def _celery_processes_of(pid: int) -> list[int]:
    """Pids of Celery workers started by serve process *pid* (named ordercheck-<pid>@...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"ordercheck-{pid}@".encode() in cmdline:
            found.append(int(entry.name))
    return found


def _serve(env: dict[str, str], *args: str, code: str | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "worker.cli", "serve"]
    return subprocess.Popen(
        [*cmd, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ordercheck_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ordercheck:")]


@pytest.mark.redis
@pytest.mark.slow
def test_serve_exits_3_in_one_line_when_the_worker_cannot_import(redis_url: str) -> None:
    """The issue's bare install: kombu's Redis transport cannot import `packaging`."""
    port = free_port()
    code = (
        "import sys; sys.modules['packaging'] = None; sys.modules['packaging.version'] = None;"
        "from worker.cli import main; sys.exit(main(['serve']))"
    )
    proc = _serve(_env(ORDERCHECK_REDIS_URL=redis_url, ORDERCHECK_LISTEN_PORT=str(port)), code=code)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    lines = _ordercheck_lines(err)
    assert len(lines) == 1, err
    assert "Celery worker cannot start" in lines[0] and "packaging" in lines[0]
    assert "listening" not in err and "Traceback" not in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_serve_exits_2_in_one_line_when_redis_is_unreachable() -> None:
    dead = free_port()
    proc = _serve(_env(ORDERCHECK_REDIS_URL=f"redis://127.0.0.1:{dead}/1"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert _ordercheck_lines(err) == [
        f"ordercheck: cannot reach Redis at redis://127.0.0.1:{dead}/1: ConnectionError: "
        f"Error 111 connecting to 127.0.0.1:{dead}. Connection refused."
    ]
    assert _celery_processes_of(proc.pid) == []


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("which", ["mllp", "metrics", "review"])
def test_a_port_in_use_is_named_and_no_worker_is_left(which: str, redis_url: str) -> None:
    ports = {"mllp": free_port(), "metrics": free_port(), "review": free_port()}
    names = {
        "mllp": "ORDERCHECK_LISTEN_PORT",
        "metrics": "ORDERCHECK_METRICS_PORT",
        "review": "ORDERCHECK_REVIEW_PORT",
    }
    env = _env(
        ORDERCHECK_REDIS_URL=redis_url,
        ORDERCHECK_LISTEN_PORT=str(ports["mllp"]),
        ORDERCHECK_METRICS_PORT=str(ports["metrics"]),
        ORDERCHECK_REVIEW_PORT=str(ports["review"]),
        ORDERCHECK_REVIEW_HOST="127.0.0.1",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[which]))
        taken.listen()
        proc = _serve(env, "--review")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = _ordercheck_lines(err)
    failures = [line for line in lines if "cannot listen" in line]
    assert len(failures) == 1, err
    assert f"127.0.0.1:{ports[which]}" in failures[0] and names[which] in failures[0]
    assert "celery" not in err.lower()  # no worker was started
    assert _celery_processes_of(proc.pid) == []


@pytest.mark.redis
def test_a_worker_that_dies_at_start_stops_serve_with_its_cause(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.serve as serve_module

    script = "import sys; print('starting'); sys.exit('RuntimeError: no broker for you')"
    monkeypatch.setattr(
        serve_module,
        "start_celery_worker",
        lambda settings: CeleryWorker([sys.executable, "-c", script], dict(os.environ)),
    )
    port = free_port()
    settings = Settings(redis_url=redis_url, listen_port=port, metrics_port=0)

    async def start() -> str:
        service = Service(settings)
        with pytest.raises(StartupError) as exc:
            await service.start()
        return str(exc.value)

    message = asyncio.run(start())
    assert message.startswith("the Celery worker exited at start (status 1)")
    assert message.endswith("RuntimeError: no broker for you")
    with pytest.raises(OSError):  # stopped again: nothing listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.redis
def test_no_order_is_accepted_before_the_worker_is_ready(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.serve as serve_module

    monkeypatch.setattr(
        serve_module,
        "start_celery_worker",
        lambda settings: CeleryWorker(
            [sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ)
        ),
    )
    port = free_port()
    settings = Settings(redis_url=redis_url, listen_port=port)

    async def start() -> tuple[str, bool, str]:
        service = Service(settings)
        await service.bind()
        starting = asyncio.create_task(service.start_workers(timeout=3))
        await asyncio.sleep(1)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            refused = False
        except OSError:
            refused = True
        health = service.health()
        with pytest.raises(StartupError) as exc:
            await starting
        return health["listener"] + " " + health["status"], refused, str(exc.value)

    health, refused, message = asyncio.run(start())
    assert refused and health == "starting degraded"
    assert message == "the Celery worker did not report ready within 3 s"


def test_the_worker_ready_signal_and_silence() -> None:
    ready = (
        "import os, time; fd = int(os.environ['ORDERCHECK_WORKER_READY_FD']);"
        "os.write(fd, b'ready'); time.sleep(30)"
    )
    worker = CeleryWorker([sys.executable, "-c", ready], dict(os.environ))
    try:
        assert worker.wait_ready(20) is None and worker.poll_ready()
    finally:
        worker.stop(5)
    assert worker.returncode is not None
    silent = CeleryWorker([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ))
    try:
        assert worker.ready and not silent.ready
        assert silent.wait_ready(0.5) == "the Celery worker did not report ready within 0.5 s"
    finally:
        silent.stop(5)


@pytest.fixture
def serve_without_destination(redis_url: str, tmp_path: Path) -> Iterator[tuple[Serve, int]]:
    metrics = free_port()
    service = Serve(
        {
            "ORDERCHECK_REDIS_URL": redis_url,
            "ORDERCHECK_WORKERS": "1",
            "ORDERCHECK_METRICS_PORT": str(metrics),
            "TMPDIR": str(tmp_path),
        }
    )
    service.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        yield service.start(), metrics
    finally:
        service.stop()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.redis
@pytest.mark.slow
def test_serve_without_a_destination_warns_keeps_not_sent_and_reports_it(
    serve_without_destination: tuple[Serve, int],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service, metrics = serve_without_destination
    assert list(tmp_path.glob("ordercheck-metrics-*"))  # made for this run
    code, _, _ = service.send(SEED.read_bytes().replace(b"\n", b"\r"))
    assert code == "AA"

    def health() -> dict[str, object]:
        status, body = _get(metrics, "/health")
        assert status == 200, body
        data: dict[str, object] = json.loads(body)
        return data

    wait_until(lambda: health().get("not_sent") == 1, 60, "the advisory to be kept not-sent")
    state = health()
    assert state["undelivered"] == 1 and state["pending"] == 0
    assert state["destinations"] == {
        "none": {
            "state": "not configured",
            "pending": 0,
            "undelivered": 1,
            "oldest_pending_seconds": 0.0,
            "last_error": "",
        }
    }
    _, text = _get(metrics, "/metrics")
    body = text.decode()
    assert 'ordercheck_advisories_not_delivered{destination="none"} 1.0' in body
    assert "ordercheck_broker_queue_depth 0.0" in body
    assert "ordercheck_workers_up 1.0" in body
    assert "ordercheck_orders_checked_total" in body  # the worker processes' metrics too

    from worker.cli import main

    monkeypatch.setenv("ORDERCHECK_REDIS_URL", redis_url)
    assert main(["advisories", "--undelivered"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ID  ") and len(out) == 2
    assert " SEED01 " in out[1] and " not-sent " in out[1]
    assert "no destination configured" in out[1]

    service.stop()
    log = service.log_text()
    warning = [line for line in log.splitlines() if "ORDERCHECK_ADVISORY_HOST" in line]
    assert warning and warning[0].startswith("ordercheck: warning:")
    for line in log.splitlines():  # no Celery banner or bare print among the JSON lines
        if line.strip() and not line.startswith("ordercheck:"):
            assert isinstance(json.loads(line), dict), line
    assert "[config]" not in log and ".> transport:" not in log  # Celery's banner
    assert not list(tmp_path.glob("ordercheck-metrics-*"))  # removed on exit


@pytest.mark.redis
@pytest.mark.slow
def test_resend_all_undelivered_reaches_the_ordering_system(
    serve_without_destination: tuple[Serve, int],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker.cli import main

    service, metrics = serve_without_destination
    assert service.send(SEED.read_bytes().replace(b"\n", b"\r"))[0] == "AA"
    wait_until(lambda: json.loads(_get(metrics, "/health")[1]).get("not_sent") == 1, 60, "not-sent")
    ris = FakeOrderingSystem().start()
    try:
        monkeypatch.setenv("ORDERCHECK_REDIS_URL", redis_url)
        monkeypatch.setenv("ORDERCHECK_ADVISORY_HOST", "127.0.0.1")
        monkeypatch.setenv("ORDERCHECK_ADVISORY_PORT", str(ris.port))
        assert main(["advisories", "--resend", "--all-undelivered"]) == 0
        out = capsys.readouterr().out
        assert f"delivered to 127.0.0.1:{ris.port}" in out
        assert [a.placer for a in ris.advisories()] == ["EP100001"]
        assert main(["advisories", "--undelivered"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == ["none"]
    finally:
        ris.stop()


@pytest.mark.redis
@pytest.mark.slow
def test_the_bare_e2e_script_delivers_an_advisory() -> None:
    """tests/support/bare_e2e.py, the CI step's script, run on this venv's ordercheck."""
    db = os.environ.get("ORDERCHECK_TEST_REDIS_DB_E2E", "14")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCHECK_")}
    env["ORDERCHECK_E2E_REDIS_DB"] = db
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "bare_e2e.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bare_e2e: OK: advisory" in done.stdout


@pytest.mark.redis
def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly_with_its_cause(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import worker.serve as serve_module

    started: list[CeleryWorker] = []

    def dying(settings: Settings) -> CeleryWorker:
        worker = CeleryWorker(
            [sys.executable, "-c", "import sys; sys.exit('RuntimeError: crashed at start')"],
            dict(os.environ),
        )
        started.append(worker)
        return worker

    monkeypatch.setattr(serve_module, "start_celery_worker", dying)
    service = Service(Settings(redis_url=redis_url, listen_port=0))

    async def supervise() -> None:
        service.celery = dying(service.settings)
        task = asyncio.create_task(service._supervise(interval=0.1, longest=10))
        await asyncio.sleep(2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="ordercheck.serve"):
        asyncio.run(supervise())
    for worker in started:
        worker.stop(5)
    # Waits of 0.2, 0.4, 0.8, 1.6 s: at most 4 restarts in 2 s (every 0.1 s would be ~20).
    assert 2 <= len(started) <= 5
    messages = [r.getMessage() for r in caplog.records]
    assert messages and all("RuntimeError: crashed at start" in m for m in messages)
