"""The token exchange (`POST /auth/user/token/issue`) and keeping secrets out of text.

A token or password must never reach an exception message, a repr or a log line: errors here describe
what was wrong with a response's shape, never its content.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs, urlencode

import orjson

CONTENT_TYPE = "application/x-www-form-urlencoded"
AUTH_HEADER = "Authorization"


class TokenError(Exception):
    """A token request or response that cannot be used; the message never contains a secret."""


def encode_token_request(username: str, password: str) -> bytes:
    """The form body `username=...&password=...` the token endpoint expects."""
    if not username or not password:
        raise TokenError("username and password are both required")
    return urlencode({"username": username, "password": password}).encode("ascii")


def decode_token_request(body: bytes) -> tuple[str, str]:
    """Server side: (username, password) from a form body; TokenError if either is missing."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise TokenError("form body is not UTF-8") from None
    username = fields.get("username", [""])[0]
    password = fields.get("password", [""])[0]
    if not username or not password:
        raise TokenError("form fields username and password are required")
    return username, password


def parse_token_response(body: bytes) -> str:
    """The token from the endpoint's `{"Authorization": "<token>"}` answer."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TokenError(f"token response is not JSON ({len(body)} bytes)") from None
    if not isinstance(obj, dict):
        raise TokenError("token response is not a JSON object")
    token = obj.get(AUTH_HEADER)
    if not isinstance(token, str) or not token.strip():
        keys = ", ".join(sorted(str(k) for k in obj)[:10]) or "none"
        raise TokenError(f"token response has no {AUTH_HEADER} string (keys: {keys})")
    return token_from_header(token)


def token_from_header(value: str) -> str:
    """The raw token in an Authorization value; `Bearer <token>` is tolerated as well as the raw form."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip()
    return value


def jwt_claims(token: str) -> dict[str, object] | None:
    """The unverified claims of a JWT-shaped token (to plan a refresh before `exp`), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def token_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT-shaped token, or None if it has none."""
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None

