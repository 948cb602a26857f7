"""docker-compose.yml: no Docker engine runs here, so check that it parses and is coherent."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import ROOT
from worker.settings import Settings


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_names_the_services() -> None:
    services = _compose()["services"]
    assert {"redis", "listener", "worker", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert services["worker"]["command"][:3] == ["celery", "-A", "worker.celery_app"]
    assert services["listener"]["command"][:2] == ["ordercheck", "serve"]


def test_compose_environment_uses_real_settings() -> None:
    fields = {f"ORDERCHECK_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for key in service.get("environment", {}) or {}:
            if key.startswith("ORDERCHECK_"):
                assert key in fields, f"{name}: {key} is not a setting"


def _all_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def test_every_service_has_a_healthcheck_and_a_pinned_image() -> None:
    import re

    for name, service in _compose()["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and re.match(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"
    assert "healthcheck" in _compose()["services"]["listener"]
    assert "/health" in " ".join(_compose()["services"]["listener"]["healthcheck"]["test"])


def test_secrets_come_from_the_env_file() -> None:
    import re

    text = _all_text()
    assert "change-me" not in text
    example = (ROOT / ".env.example").read_text()
    defined = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and line[0] != "#"
    }
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"} <= required
    assert required <= defined, required - defined
    assert {"ORDERCHECK_REVIEW_USERS", "ORDERCHECK_REVIEW_SECRET"} <= defined
    services = _compose()["services"]
    for name in ("listener", "worker", "review"):
        assert services[name]["env_file"] == [".env"]
        assert "${REDIS_PASSWORD" in services[name]["environment"]["ORDERCHECK_REDIS_URL"]
    assert "--requirepass" in services["redis"]["command"]
    for line in example.splitlines():  # the example holds no secret value
        key, _, value = line.partition("=")
        if any(w in key for w in ("PASSWORD", "SECRET", "AUTH")):
            assert value == "", line


def test_flower_has_basic_auth_and_workers_send_events() -> None:
    services = _compose()["services"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC")
    assert "-E" in services["worker"]["command"]
    assert "--quiet" in services["worker"]["command"]  # no banner among the JSON lines


def test_metrics_ports_do_not_clash_with_node_exporter() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        published = " ".join(str(p) for p in service.get("ports", []) + service.get("expose", []))
        assert "9100" not in published, name
    assert "9100" not in str(services["listener"]["environment"])
    assert services["listener"]["environment"]["ORDERCHECK_METRICS_PORT"] == "9464"
    assert services["worker"]["environment"]["ORDERCHECK_WORKER_METRICS_PORT"] == "9465"
    assert "9465" in " ".join(services["worker"]["healthcheck"]["test"])


def test_docker_compose_config_accepts_it(tmp_path: Any) -> None:
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        ).returncode
    ):
        import pytest

        pytest.skip("no docker compose here (the YAML is checked by the other tests)")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = (ROOT / ".env.example").read_text()
    env = env.replace("REDIS_PASSWORD=\n", "REDIS_PASSWORD=x\n").replace(
        "ADVISORY_HOST=\n", "ADVISORY_HOST=ris\n"
    )
    (tmp_path / ".env").write_text(env.replace("FLOWER_BASIC_AUTH=\n", "FLOWER_BASIC_AUTH=a:b\n"))
    done = subprocess.run(
        [docker, "compose", "config", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _exported_names() -> set[str]:
    """Every sample name ordercheck's /metrics can show: worker/metrics.py's counters and
    histograms (with their suffixes) and the delivery view's gauges."""
    from prometheus_client import REGISTRY, CollectorRegistry

    import worker.metrics  # noqa: F401 - registers them
    from worker.opsview import OpsCollector
    from worker.store import MemoryStore

    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("ordercheck_"):
            continue
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OpsCollector(MemoryStore(), Settings(), lambda: 0, lambda: 1))
    names |= {family.name for family in registry.collect()}
    return names


def _metric_names(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\bordercheck_[a-z_]+", expr))


def test_alert_rules_name_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    exported = _exported_names()
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"OrdercheckAdvisoriesUndelivered", "OrdercheckDeliveryBacklog"} <= set(alerts)
    assert "OrdercheckWorkersDown" in alerts
    assert "> 300" in alerts["OrdercheckDeliveryBacklog"]["expr"]  # oldest pending > 5 min
    assert "> 0" in alerts["OrdercheckAdvisoriesUndelivered"]["expr"]
    for name, rule in alerts.items():
        used = _metric_names(rule["expr"])
        assert used <= exported, f"{name}: {used - exported} is not exported"
    assert _metric_names(alerts["OrdercheckWorkersDown"]["expr"]) == {"ordercheck_workers_up"}


def test_grafana_dashboard_names_exported_metrics() -> None:
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exported = _exported_names()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= _metric_names(target["expr"])
    assert used and used <= exported, used - exported
    assert {"ordercheck_advisories_not_delivered", "ordercheck_oldest_pending_seconds"} <= used
