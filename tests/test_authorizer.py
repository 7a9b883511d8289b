"""The $connect authorizer against moto's Secrets Manager, with API Gateway's event shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.aws_local import handler_env, load_handlers, moto_server
from wire import token as tokens

CONTEXT = SimpleNamespace(aws_request_id="authz-1")
ARN = "arn:aws:execute-api:us-east-1:000000000000:api1/live/$connect"
AUD = tokens.audience_for("test")


@pytest.fixture(scope="module")
def authorizer() -> Iterator[tuple[object, object, str]]:
    with moto_server() as moto:
        sm = moto.client("secretsmanager")
        arn = sm.create_secret(Name="connect-token", SecretString="first-key")["ARN"]
        env = {
            "AUTH_SECRET_ARN": arn,
            "TOKEN_AUDIENCE": AUD,
            "ALLOWED_ORIGINS": "https://app.example.com, http://localhost:8000/",
        }
        with handler_env(moto, **env):
            module = load_handlers()["authorize"]
        yield module, sm, arn


def connect_event(token: str | None = None, origin: str | None = None) -> dict:
    headers = {"Host": "api1.execute-api.us-east-1.amazonaws.com"}
    if origin:
        headers["Origin"] = origin
    return {
        "type": "REQUEST",
        "methodArn": ARN,
        "headers": headers,
        "queryStringParameters": {"token": token} if token is not None else None,
        "requestContext": {"routeKey": "$connect", "connectionId": "c=", "requestId": "r"},
    }


def effect(result: dict) -> str:
    return result["policyDocument"]["Statement"][0]["Effect"]


def test_a_valid_token_is_allowed_and_its_subject_passed_on(authorizer) -> None:
    module, _, _ = authorizer
    token = tokens.mint(b"first-key", AUD, subject="caller-9")
    result = module.handler(connect_event(token, "https://app.example.com"), CONTEXT)
    assert effect(result) == "Allow"
    assert result["policyDocument"]["Statement"][0]["Resource"] == ARN
    assert result["context"]["subject"] == "caller-9"


def test_no_token_is_a_401(authorizer) -> None:
    module, _, _ = authorizer
    with pytest.raises(Exception, match="^Unauthorized$"):
        module.handler(connect_event(None), CONTEXT)


@pytest.mark.parametrize(
    "token",
    [
        tokens.mint(b"other-key", AUD),
        tokens.mint(b"first-key", tokens.audience_for("prod")),
        tokens.mint(b"first-key", AUD, ttl_seconds=1, now=time.time() - 120),
        "garbage",
    ],
    ids=["wrong-key", "other-stack", "expired", "garbage"],
)
def test_bad_tokens_are_denied(authorizer, token: str) -> None:
    module, _, _ = authorizer
    assert effect(module.handler(connect_event(token), CONTEXT)) == "Deny"


def test_an_origin_off_the_list_is_denied_even_with_a_token(authorizer) -> None:
    module, _, _ = authorizer
    token = tokens.mint(b"first-key", AUD)
    assert effect(module.handler(connect_event(token, "https://evil.example"), CONTEXT)) == "Deny"
    assert effect(module.handler(connect_event(token, "http://localhost:8000"), CONTEXT)) == "Allow"


def test_a_rotated_secret_is_picked_up(authorizer, monkeypatch) -> None:
    module, sm, arn = authorizer
    sm.put_secret_value(SecretId=arn, SecretString="second-key")
    monkeypatch.setattr(module._secret, "fetched_at", time.monotonic() - 60)  # cached a while
    token = tokens.mint(b"second-key", AUD)
    assert effect(module.handler(connect_event(token), CONTEXT)) == "Allow"
