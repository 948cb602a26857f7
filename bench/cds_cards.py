"""Time to answer a CDS Hooks call, per request and per card, and the share of fhir.resources.

    .venv/bin/python -m bench.cds_cards [--rounds 20] [--http]

Inputs: every order message of seeds/*.hl7 as its equivalent order-sign request
(tests/fhirseeds.py, with Patient and prior-study prefetch), plus a flagged CT draft. Each request
is answered --rounds times in process (CdsService.call: JSON in, cards out); with --http also
over HTTP through the waitress server and an httpx client on loopback. Wall time
(time.perf_counter). Prints the first (cold) call, then p50 / p99 in milliseconds per request, per
card, and for reading the FHIR resources alone (fhir.resources R4B models, the lenient loader).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests import fhirseeds
from worker.cds.fhir import load
from worker.cds.service import CdsService
from worker.cds.translate import resources_of
from worker.guideline import default_knowledge
from worker.store import MemoryStore

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def requests() -> list[dict[str, Any]]:
    kn = default_knowledge()
    cases = fhirseeds.seed_cases(sorted((ROOT / "seeds").glob("*.hl7")), kn)
    return [c.request for cs in cases.values() for c in cs]


def fhir_only(body: dict[str, Any]) -> None:
    for entry in body["context"]["draftOrders"]["entry"]:
        load(entry["resource"], {"subject": {"reference": "Patient/x"}})
    for value in body.get("prefetch", {}).values():
        for res in resources_of(value):
            load(res)


def row(label: str, values: list[float]) -> str:
    return (
        f"{label:<34} {percentile(values, 0.5) * 1000:8.3f} {percentile(values, 0.99) * 1000:8.3f}"
        f" {len(values):7d}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--http", action="store_true", help="also time calls over HTTP")
    args = parser.parse_args()
    bodies = [json.dumps(b).encode() for b in requests()]
    service = CdsService(default_knowledge(), MemoryStore())
    start = time.perf_counter()
    service.call("order-sign", bodies[0])
    cold = time.perf_counter() - start
    per_request: list[float] = []
    per_card: list[float] = []
    reading: list[float] = []
    cards = 0
    for _ in range(args.rounds):
        for body in bodies:
            t0 = time.perf_counter()
            answer = service.call("order-sign", body)
            elapsed = time.perf_counter() - t0
            per_request.append(elapsed)
            n = len(answer.body["cards"])
            cards += n
            if n:
                per_card.append(elapsed / n)
            data = json.loads(body)
            t0 = time.perf_counter()
            fhir_only(data)
            reading.append(time.perf_counter() - t0)
    print(f"{len(bodies)} requests x {args.rounds} rounds, {cards // args.rounds} cards a round")
    print(f"first call (cold: model building): {cold * 1000:.1f} ms")
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'n':>7}")
    print(row("in process, per request", per_request))
    print(row("in process, per card", per_card))
    print(row("fhir.resources reading alone", reading))
    if args.http:
        import httpx

        from worker.cds.server import build_server
        from worker.settings import Settings

        server = build_server(
            Settings(cds_host="127.0.0.1", cds_port=0), default_knowledge(), MemoryStore()
        ).start()
        over_http: list[float] = []
        try:
            with httpx.Client(base_url=server.url) as client:
                for _ in range(args.rounds):
                    for body in bodies:
                        t0 = time.perf_counter()
                        resp = client.post(
                            "/cds-services/order-sign",
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        over_http.append(time.perf_counter() - t0)
                        assert resp.status_code == 200
        finally:
            server.stop()
        print(row("over HTTP (waitress), per request", over_http))
    return 0


if __name__ == "__main__":
    sys.exit(main())
