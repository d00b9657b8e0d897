"""Issuing and checking the server's tokens: HS256 JWTs under a per-process secret, plus revocation.

Pure (the clock is injected) so expiry and revocation are unit-testable without sleeping.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

STATIC_TOKEN_ID = "static"


class TokenStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing token"
    INVALID = "invalid token"
    EXPIRED = "expired token"
    REVOKED = "revoked token"


@dataclass(frozen=True, slots=True)
class TokenCheck:
    status: TokenStatus
    token_id: str | None = None  # the jti (or STATIC_TOKEN_ID): what revocation works on, never the token
    subject: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is TokenStatus.OK


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"

    def matches(self, username: str, password: str) -> bool:
        # Both compared, constant time, so timing says nothing about which one was wrong.
        user_ok = hmac.compare_digest(username.encode(), self.username.encode())
        pass_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok and pass_ok


class TokenAuthority:
    """Issues JWTs (HS256, `sub`, `iat`, `exp`, `jti`), accepts only its own unexpired unrevoked ones.

    `static_token`, if given, is accepted as is (an operator-chosen token, as `ime-sim --token T`).
    """

    def __init__(self, *, ttl: float = 3600.0, static_token: str | None = None, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl <= 0:
            raise ValueError("token TTL must be positive")
        self.ttl = ttl
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._static = static_token
        self._clock = clock
        self._revoked: set[str] = set()

    def __repr__(self) -> str:
        return f"TokenAuthority(ttl={self.ttl}, static_token={'set' if self._static else 'none'})"

    def _sign(self, signing_input: str) -> str:
        return _b64(hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest())

    def issue(self, subject: str, ttl: float | None = None) -> str:
        now = self._clock()
        claims = {"sub": subject, "iat": int(now), "exp": int(now + (self.ttl if ttl is None else ttl)),
                  "jti": secrets.token_hex(8)}
        signing_input = f"{_HEADER}.{_b64(orjson.dumps(claims))}"
        return f"{signing_input}.{self._sign(signing_input)}"

    def check(self, token: str | None) -> TokenCheck:
        if not token:
            return TokenCheck(TokenStatus.MISSING)
        if self._static is not None and hmac.compare_digest(token.encode(), self._static.encode()):
            if STATIC_TOKEN_ID in self._revoked:
                return TokenCheck(TokenStatus.REVOKED, STATIC_TOKEN_ID)
            return TokenCheck(TokenStatus.OK, STATIC_TOKEN_ID)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _HEADER:
            return TokenCheck(TokenStatus.INVALID)
        if not hmac.compare_digest(parts[2].encode(), self._sign(f"{parts[0]}.{parts[1]}").encode()):
            return TokenCheck(TokenStatus.INVALID)
        try:
            claims = orjson.loads(_unb64(parts[1]))
        except ValueError:
            return TokenCheck(TokenStatus.INVALID)
        if not isinstance(claims, dict):
            return TokenCheck(TokenStatus.INVALID)
        jti, sub, exp = claims.get("jti"), claims.get("sub"), claims.get("exp")
        if not isinstance(jti, str) or not isinstance(exp, int | float):
            return TokenCheck(TokenStatus.INVALID)
        subject = sub if isinstance(sub, str) else None
        if jti in self._revoked:
            return TokenCheck(TokenStatus.REVOKED, jti, subject)
        if exp <= self._clock():
            return TokenCheck(TokenStatus.EXPIRED, jti, subject)
        return TokenCheck(TokenStatus.OK, jti, subject)

    def revoke(self, token_id: str) -> None:
        self._revoked.add(token_id)

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked
