"""The token exchange's encoding, and that secrets never leak into errors."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
import pytest

from recorder.feed.token import (
    TokenError,
    decode_token_request,
    encode_token_request,
    jwt_claims,
    parse_token_response,
    token_expiry,
    token_from_header,
)
from recorder.server.tokens import TokenAuthority

PASSWORD = "p&ss=w+rd %ü"


def test_form_body_round_trips_awkward_passwords():
    body = encode_token_request("demo user", PASSWORD)
    assert body.isascii() and b"&password=" in body
    assert parse_qs(body.decode()) == {"username": ["demo user"], "password": [PASSWORD]}
    assert decode_token_request(body) == ("demo user", PASSWORD)
    # curl -d username=demo -d password=x sends exactly this shape.
    assert decode_token_request(b"username=demo&password=x") == ("demo", "x")


@pytest.mark.parametrize("body", [b"", b"username=demo", b"password=x", b"username=&password=x", b"\xff=1"])
def test_incomplete_forms_are_refused(body):
    with pytest.raises(TokenError):
        decode_token_request(body)


def test_encode_needs_both():
    with pytest.raises(TokenError):
        encode_token_request("", "x")


def test_parse_token_response():
    assert parse_token_response(b'{"Authorization": "eyJ.abc.def"}') == "eyJ.abc.def"
    assert parse_token_response(b'{"Authorization": "Bearer eyJ.abc.def"}') == "eyJ.abc.def"


@pytest.mark.parametrize("body", [
    b"<html>secret-in-html</html>",
    b'["secret-in-array"]',
    b'{"token": "secret-in-wrong-key"}',
    b'{"Authorization": 5, "note": "secret-in-note"}',
    b'{"Authorization": "  "}',
])
def test_bad_responses_give_errors_without_content(body):
    with pytest.raises(TokenError) as info:
        parse_token_response(body)
    assert "secret" not in str(info.value)
    assert "\n" not in str(info.value)


def test_token_from_header():
    assert token_from_header("abc") == "abc"
    assert token_from_header("Bearer abc") == "abc"
    assert token_from_header("bearer   abc ") == "abc"
    assert token_from_header("Bearer") == "Bearer"


def test_expiry_of_issued_and_opaque_tokens():
    token = TokenAuthority(ttl=60, clock=lambda: 1_000_000.0).issue("demo")
    assert token_expiry(token) == 1_000_060.0
    assert jwt_claims(token)["sub"] == "demo"
    assert token_expiry("opaque-token") is None
    assert token_expiry("a.!!!.c") is None
    assert jwt_claims("a.W10.c") is None  # payload is a JSON array


def test_orjson_is_used_for_responses():
    # The response parser must accept exactly what a JSON server emits, unicode included.
    assert parse_token_response(orjson.dumps({"Authorization": "ü.x.y"})) == "ü.x.y"
