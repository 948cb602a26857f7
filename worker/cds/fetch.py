"""Reads what the prefetch did not bring from the client's FHIR server (`fhirServer`, with the
`fhirAuthorization` bearer token), within one bounded time budget for the whole call.

Any failure (refused, timed out, not found, not JSON, an error status) becomes a note and no data:
the order is then judged on what the request holds, never answered with a 500.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

MAX_BYTES = 5 * 1024 * 1024
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ordercheck-fhir")


class FetchError(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the bearer token goes to the named FHIR server only."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fill(template: str, context: dict[str, Any]) -> str | None:
    """A prefetch template with its {{context.x}} tokens filled (URL-encoded); None when a
    token has no value in the context."""
    out = template
    while "{{" in out:
        start = out.index("{{")
        end = out.find("}}", start)
        if end < 0:
            return None
        token = out[start + 2 : end].strip()
        name = token.removeprefix("context.")
        value = context.get(name)
        if not isinstance(value, str) or not value:
            return None
        if name == "patientId":  # "Patient/123" is sent by some clients
            value = value.removeprefix("Patient/")
        out = out[:start] + urllib.parse.quote(value, safe="") + out[end + 2 :]
    return out


def get_json(base: str, query: str, token: str | None, timeout: float) -> Any:
    """GET {base}/{query} as FHIR JSON; FetchError on any failure."""
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise FetchError("fhirServer is not an http(s) URL")
    url = base.rstrip("/") + "/" + query.lstrip("/")
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    if token:
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            body = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code}") from None
    except TimeoutError:
        raise FetchError(f"did not answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", None), TimeoutError):
            raise FetchError(f"did not answer within {timeout:g} s") from None
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{type(reason).__name__}: {reason}"[:120]) from None
    if len(body) > MAX_BYTES:
        raise FetchError("response too large")
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError("response is not JSON") from None


def fetch_missing(
    base: str,
    token: str | None,
    queries: dict[str, str],
    budget: float,
) -> tuple[dict[str, Any], list[str]]:
    """Each query's JSON by key, fetched in parallel within *budget* seconds; and notes."""
    deadline = time.monotonic() + budget
    futures = {
        key: _POOL.submit(get_json, base, query, token, budget) for key, query in queries.items()
    }
    wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
    found: dict[str, Any] = {}
    notes: list[str] = []
    for key, future in futures.items():
        if not future.done():
            future.cancel()
            notes.append(f"{key}: the FHIR server did not answer within {budget:g} s")
            continue
        try:
            found[key] = future.result()
        except FetchError as exc:
            notes.append(f"{key}: could not be read from the FHIR server ({exc})")
    return found, notes
