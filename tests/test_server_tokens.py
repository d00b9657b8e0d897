"""TokenAuthority: only its own unexpired, unrevoked tokens (or the fixed one) pass."""

from __future__ import annotations

import base64

import orjson

from recorder.server.tokens import STATIC_TOKEN_ID, Credentials, TokenAuthority, TokenStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_issued_token_is_a_valid_hs256_jwt():
    clock = FakeClock()
    auth = TokenAuthority(ttl=100, clock=clock)
    token = auth.issue("demo")
    header, payload, _ = token.split(".")
    assert orjson.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "demo" and claims["exp"] == claims["iat"] + 100 and len(claims["jti"]) == 16
    check = auth.check(token)
    assert check.ok and check.subject == "demo" and check.token_id == claims["jti"]
    assert auth.issue("demo") != token


def test_expiry_revocation_and_foreign_tokens():
    clock = FakeClock()
    auth = TokenAuthority(ttl=100, clock=clock)
    token = auth.issue("demo")
    clock.now += 99
    assert auth.check(token).ok
    clock.now += 1
    assert auth.check(token).status is TokenStatus.EXPIRED
    fresh = auth.issue("demo")
    auth.revoke(auth.check(fresh).token_id)
    assert auth.check(fresh).status is TokenStatus.REVOKED
    assert auth.check(auth.issue("demo")).ok  # revoking one token leaves others alone
    other = TokenAuthority(ttl=100, clock=clock).issue("demo")
    assert auth.check(other).status is TokenStatus.INVALID


def test_tampering_and_garbage():
    auth = TokenAuthority()
    token = auth.issue("demo")
    h, p, s = token.split(".")
    forged_claims = base64.urlsafe_b64encode(orjson.dumps({"sub": "admin", "exp": 9e12, "jti": "x"})).rstrip(b"=")
    for bad in (f"{h}.{forged_claims.decode()}.{s}", f"{h}.{p}.{s[:-2]}AA", f"{h}.{p}", "x.y.z", "garbage",
                token + "x", f"{h}.!!!.{s}"):
        assert auth.check(bad).status is TokenStatus.INVALID, bad
    assert auth.check(None).status is TokenStatus.MISSING
    assert auth.check("").status is TokenStatus.MISSING


def test_static_token_and_its_revocation():
    auth = TokenAuthority(static_token="fixed-demo-token")
    assert auth.check("fixed-demo-token").ok
    assert auth.check("fixed-demo-token").token_id == STATIC_TOKEN_ID
    assert auth.check("fixed-demo-token2").status is TokenStatus.INVALID
    auth.revoke(STATIC_TOKEN_ID)
    assert auth.check("fixed-demo-token").status is TokenStatus.REVOKED


def test_secrets_stay_out_of_reprs():
    auth = TokenAuthority(static_token="fixed-demo-token")
    assert "fixed-demo-token" not in repr(auth)
    creds = Credentials("demo", "hunter22")
    assert "hunter22" not in repr(creds) and "demo" in repr(creds)
    assert creds.matches("demo", "hunter22")
    assert not creds.matches("demo", "hunter2") and not creds.matches("demo2", "hunter22")
