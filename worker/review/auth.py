"""Who may open the review page: a user and password, or the access token, from the settings.

Passwords and tokens are compared in constant time. Repeated failures are slowed down per user
name and client address together (throttle_key): after MAX_FAILURES in WINDOW seconds that
name is refused from that address until the window passes. Keyed by address alone, one
reviewer's typos (or an attacker) behind a shared proxy address would lock every reviewer out.
"""

from __future__ import annotations

import hmac
import threading
import time

from worker.settings import Settings

MAX_FAILURES = 10
WINDOW = 300.0  # seconds
TOKEN_REVIEWER = "token"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def login_configured(settings: Settings) -> bool:
    return bool(settings.review_users) or settings.review_token is not None


def check_login(settings: Settings, user: str, password: str, token: str) -> str | None:
    """The reviewer name for these credentials, or None.

    A user name with its password logs in as that user. The token logs in as "token", or as
    "token:NAME" when a name was typed too, so the audit trail says who used it.
    """
    user = user.strip()
    if token:
        expected = settings.review_token
        if (
            expected is not None
            and expected.get_secret_value()
            and _same(token, expected.get_secret_value())
        ):
            return f"{TOKEN_REVIEWER}:{user[:60]}" if user else TOKEN_REVIEWER
        return None
    if not user or not password:
        return None
    ok = False
    for name, secret in settings.review_users.items():  # every entry: no timing by position
        if _same(user, name) & _same(password, secret.get_secret_value()):
            ok = True
    return user if ok else None


def throttle_key(user: str, address: str) -> str:
    """The throttle's key for a login attempt: the user name (case and spaces ignored, as the
    login compares names after strip) and the client address."""
    return f"{user.strip().casefold()[:100]}\x1f{address}"


class Throttle:
    """Counts failed logins per key (throttle_key) within WINDOW seconds."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.max = max_failures
        self.window = window
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._fails.get(key, []) if now - t < self.window]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def blocked(self, key: str) -> bool:
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= self.max

    def failed(self, key: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._fails[key] = [*self._recent(key, now), now]
            if len(self._fails) > 10_000:  # bound memory under a spray of addresses
                self._fails.pop(next(iter(self._fails)))

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)
