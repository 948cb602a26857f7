"""The CDS Hooks client's bearer JWT (CDS Hooks 2.0, "Trusting CDS Clients").

The client signs a JWT per request (ES384 or RS384; other asymmetric algorithms are accepted,
"none" and shared-secret ones are not) with iss (its issuer, which we know with its key or JWKS),
aud (the service endpoint called), exp (at most five minutes ahead), iat and jti (never reused:
a replayed token is refused).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import jwt

ALGORITHMS = ["ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS384", "PS256", "PS512"]
MAX_LIFETIME = 300  # seconds: "exp ... no more than 5 minutes in the future"
LEEWAY = 30


class AuthError(Exception):
    """The request's token is missing or not acceptable; the message says why (HTTP 401)."""


def audiences_for(url: str) -> list[str]:
    """The aud values a client may sign for a call of *url*: the service endpoint (the
    specification's), and for feedback or a client that signs the base, those too."""
    url = url.rstrip("/")
    out = [url, url.removesuffix("/feedback")]
    if "/cds-services" in url:
        out.append(url[: url.index("/cds-services") + len("/cds-services")])
    return list(dict.fromkeys(out))


class JwtVerifier:
    def __init__(
        self,
        issuer: str,
        key_file: Path | None = None,
        jwks_file: Path | None = None,
        audiences: list[str] | None = None,
    ) -> None:
        if key_file is None and jwks_file is None:
            raise ValueError("a JWT issuer needs ORDERCHECK_CDS_JWT_KEY or ORDERCHECK_CDS_JWT_JWKS")
        self.issuer = issuer
        self.audiences = list(audiences or [])
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        try:
            if key_file is not None:
                self._key = key_file.read_text()
            if jwks_file is not None:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(jwks_file.read_text()))
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"cannot read the CDS client key: {exc}") from None
        self._seen: dict[str, float] = {}  # jti -> exp
        self._lock = threading.Lock()

    def verify(self, authorization: str | None, url: str) -> dict[str, Any]:
        """The token's claims; AuthError when it is missing, invalid or replayed."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("a bearer token (JWT) is required")
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audiences or audiences_for(url),
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["iss", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        now = time.time()
        exp = float(claims["exp"])
        if exp - now > MAX_LIFETIME + LEEWAY:
            raise AuthError("invalid token: exp is more than 5 minutes ahead")
        jti = str(claims["jti"])
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v + LEEWAY > now}
            if jti in self._seen:
                raise AuthError("invalid token: jti was used before")
            self._seen[jti] = exp
        return claims

    def _key_for(self, header: dict[str, Any]) -> Any:
        if self._jwks is not None:
            kid = header.get("kid")
            for k in self._jwks.keys:
                if kid is None or k.key_id == kid:
                    return k.key
            raise AuthError(f"no key {kid!r} in the configured JWKS")
        return self._key
