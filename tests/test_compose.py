"""docker-compose.yml: no Docker engine runs here, so check that it parses and is coherent."""

from __future__ import annotations

from typing import Any

import yaml
from conftest import ROOT

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
