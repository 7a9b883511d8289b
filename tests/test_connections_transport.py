"""The worker's ``@connections`` transport (aiohttp + botocore's SigV4 signer) makes the
request boto3's ``apigatewaymanagementapi`` client would make, and reads API Gateway's
answers (the local emulator's, shaped as AWS's) the same way."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from emulators.api_gateway import ApiGatewayEmulator
from worker.connections import ConnectionsApi, _region_of

ENDPOINT = "https://abc123.execute-api.eu-west-1.amazonaws.com/live"
CONNECTION = "Ab-_c=dE0fGhI="  # API Gateway ids are base64-like: '=' must be encoded


def boto3_request(method: str, connection_id: str, data: bytes = b"") -> Any:
    """The request boto3 prepares for the same operation, captured before it is sent."""
    client = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=ENDPOINT,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    captured: list[Any] = []

    def capture(request: Any, **_: Any) -> Any:
        captured.append(request)
        raise _Captured

    client.meta.events.register("before-send", capture)
    operation = {
        "POST": lambda: client.post_to_connection(ConnectionId=connection_id, Data=data),
        "GET": lambda: client.get_connection(ConnectionId=connection_id),
        "DELETE": lambda: client.delete_connection(ConnectionId=connection_id),
    }[method]
    with pytest.raises(_Captured):
        operation()
    return captured[0]


class _Captured(Exception):
    pass


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_requests_are_canonically_the_same_as_boto3s(method: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    data = b'{"type":"audio"}' if method == "POST" else b""
    ours = ConnectionsApi(ENDPOINT, 4).signed_request(method, CONNECTION, data)
    theirs = boto3_request(method, CONNECTION, data)
    assert ours.url == theirs.url
    assert ours.method == theirs.method
    assert (ours.body or b"") == (theirs.body or b"")
    # The same canonical request (path encoding included) is what the signature covers;
    # boto3 signs a few SDK headers more, which API Gateway does not require.
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "execute-api", "eu-west-1")
    date = {"X-Amz-Date": ours.headers["X-Amz-Date"]}

    def canonical(request: Any) -> str:
        bare = AWSRequest(method=request.method, url=request.url, data=request.body, headers=date)
        return signer.canonical_request(bare)

    assert canonical(ours) == canonical(theirs)
    assert ours.headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert "%3D" in ours.url and "Credential=AKIDEXAMPLE/" in ours.headers["Authorization"]
    assert "/eu-west-1/execute-api/aws4_request" in ours.headers["Authorization"]


def test_the_region_comes_from_the_endpoint() -> None:
    assert _region_of(ENDPOINT) == "eu-west-1"


def test_post_get_and_delete_against_the_gateway_emulator(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")

    async def scenario() -> None:
        from websockets.asyncio.client import connect

        gateway = ApiGatewayEmulator(routes={}, stage="local")
        await gateway.start(host="127.0.0.1", port=0)
        api = ConnectionsApi(gateway.connections_endpoint_url, 4)
        try:
            async with connect(gateway.ws_url) as socket:
                await asyncio.sleep(0.1)
                (cid,) = gateway.connection_ids()
                assert await api.post(cid, b'{"type":"pong"}')
                assert await socket.recv() == '{"type":"pong"}'
                assert await api.is_connected(cid)
                await api.disconnect(cid)
                await asyncio.sleep(0.1)
                assert not await api.is_connected(cid)
                assert not await api.post(cid, b"{}")  # gone: the call should end
        finally:
            await api.close()
            await gateway.stop()

    asyncio.run(scenario())
