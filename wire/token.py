"""Connect tokens: what a caller presents (``?token=``) to open a WebSocket.

A token is a standard JWT signed with HMAC-SHA256 (``HS256``) under a per-stack secret
kept in Secrets Manager, so a customer's backend can mint one with any JWT library (or
the ``mint`` below) and no call to us. Claims:

- ``aud``: the stack it is good for (``voice-agent-<stack>``); a token for dev is no good
  for prod;
- ``iat`` / ``exp``: issued and expiry times (epoch seconds); tokens live at most
  ``MAX_TTL_SECONDS``, because a leaked one should not open calls for long;
- ``sub`` (optional): the caller's id in the customer's system, passed on to the handlers.

The token only opens the connection: API Gateway checks it once, at ``$connect``; the
call itself may then last until the stack's call-duration limit.

Standard library only: the authorizer Lambda imports this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import TypeGuard

ALGORITHM = "HS256"
MAX_TTL_SECONDS = 3_600
DEFAULT_TTL_SECONDS = 300
CLOCK_SKEW_SECONDS = 30
MAX_TOKEN_CHARS = 2_048  # far above a real token; refuses garbage before any parsing


class TokenError(ValueError):
    """The token is not acceptable; the message says why (safe to log: no token in it)."""


@dataclass(frozen=True, slots=True)
class Claims:
    audience: str
    issued_at: int
    expires_at: int
    subject: str | None = None


def audience_for(stack: str) -> str:
    return f"voice-agent-{stack}"


def mint(
    secret: bytes,
    audience: str,
    *,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``audience`` valid ``ttl_seconds`` from ``now``."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be 1..{MAX_TTL_SECONDS}, got {ttl_seconds}")
    if not secret:
        raise ValueError("the signing secret is empty")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"aud": audience, "iat": issued, "exp": issued + ttl_seconds}
    if subject is not None:
        claims["sub"] = subject
    header = _b64(json.dumps({"alg": ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{_b64(_sign(secret, signing_input))}"


def verify(token: str, secret: bytes, audience: str, *, now: float | None = None) -> Claims:
    """Check signature, algorithm, audience and lifetime; return the claims or raise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token missing or too long")
    if not secret:
        raise TokenError("no signing secret configured")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWT (three dot-separated parts)")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(_unb64(header_b64))
        signature = _unb64(signature_b64)
    except ValueError:
        raise TokenError("token is not valid base64url JSON") from None
    # Pin the algorithm: never let the token choose ("none", RS256 with our secret, ...).
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        raise TokenError(f"token algorithm must be {ALGORITHM}")
    expected = _sign(secret, f"{header_b64}.{payload_b64}".encode())
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad signature")
    try:
        claims = json.loads(_unb64(payload_b64))
    except ValueError:
        raise TokenError("token payload is not valid base64url JSON") from None
    if not isinstance(claims, dict):
        raise TokenError("token payload is not an object")
    if claims.get("aud") != audience:
        raise TokenError("token is for another stack")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not (_is_int(issued) and _is_int(expires)):
        raise TokenError("token needs integer iat and exp")
    current = time.time() if now is None else now
    if expires - issued > MAX_TTL_SECONDS:
        raise TokenError(f"token lifetime exceeds {MAX_TTL_SECONDS} s")
    if current > expires + CLOCK_SKEW_SECONDS:
        raise TokenError("token expired")
    if current < issued - CLOCK_SKEW_SECONDS:
        raise TokenError("token issued in the future")
    subject = claims.get("sub")
    return Claims(
        audience=audience,
        issued_at=issued,
        expires_at=expires,
        subject=subject if isinstance(subject, str) else None,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _sign(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
