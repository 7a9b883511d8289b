"""Connect tokens: HS256 JWTs for one stack, short-lived, the algorithm pinned."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire import token as tokens

SECRET = b"s3cret-key-for-tests"
AUD = tokens.audience_for("dev")


def b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_fresh_token_verifies_with_its_claims() -> None:
    token = tokens.mint(SECRET, AUD, ttl_seconds=300, subject="caller-7", now=1_000)
    claims = tokens.verify(token, SECRET, AUD, now=1_100)
    assert claims == tokens.Claims(AUD, 1_000, 1_300, "caller-7")


def test_it_is_a_standard_hs256_jwt() -> None:
    header = tokens.mint(SECRET, AUD, now=0).split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}


@pytest.mark.parametrize(
    ("token_of", "reason"),
    [
        (lambda: tokens.mint(SECRET, AUD, ttl_seconds=60, now=0), "expired"),
        (lambda: tokens.mint(SECRET, tokens.audience_for("prod"), now=1_000), "another stack"),
        (lambda: tokens.mint(b"other-secret", AUD, now=1_000), "bad signature"),
        (lambda: tokens.mint(SECRET, AUD, now=5_000), "future"),
        (lambda: "a.b", "three"),
        (lambda: "", "missing"),
        (lambda: "x" * 5000, "too long"),
        (lambda: "!!!.###.$$$", "base64"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token_of, reason: str) -> None:
    with pytest.raises(tokens.TokenError, match=reason):
        tokens.verify(token_of(), SECRET, AUD, now=1_000)


def test_the_token_cannot_choose_its_algorithm() -> None:
    payload = b64({"aud": AUD, "iat": 1_000, "exp": 1_100})
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    with pytest.raises(tokens.TokenError, match="algorithm"):
        tokens.verify(unsigned, SECRET, AUD, now=1_000)


def test_a_tampered_payload_fails_the_signature() -> None:
    header, _, signature = tokens.mint(SECRET, AUD, now=1_000).split(".")
    forged = b64({"aud": AUD, "iat": 1_000, "exp": 999_999})
    with pytest.raises(tokens.TokenError, match="signature"):
        tokens.verify(f"{header}.{forged}.{signature}", SECRET, AUD, now=1_000)


def test_long_lived_tokens_are_neither_minted_nor_accepted() -> None:
    with pytest.raises(ValueError):
        tokens.mint(SECRET, AUD, ttl_seconds=tokens.MAX_TTL_SECONDS + 1)
    header = b64({"alg": "HS256", "typ": "JWT"})
    payload = b64({"aud": AUD, "iat": 0, "exp": 10 * tokens.MAX_TTL_SECONDS})
    signature = (
        base64.urlsafe_b64encode(tokens._sign(SECRET, f"{header}.{payload}".encode()))
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(tokens.TokenError, match="lifetime"):
        tokens.verify(f"{header}.{payload}.{signature}", SECRET, AUD, now=10)


def test_an_empty_secret_refuses_everything() -> None:
    with pytest.raises(tokens.TokenError):
        tokens.verify(tokens.mint(SECRET, AUD), b"", AUD)


@given(st.text(max_size=300))
def test_any_string_is_refused_cleanly(garbage: str) -> None:
    with pytest.raises(tokens.TokenError):
        tokens.verify(garbage, SECRET, AUD)
