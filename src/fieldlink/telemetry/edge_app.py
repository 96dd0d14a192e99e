"""The lean ASGI handler of ``/edge/v1/``: raw body → msgspec → one use case → JSON ack.

It runs in the same process as Django, behind the same ``RequestGuard`` (body cap, refused
methods), but skips Django's request machinery (middleware, URL resolving, request objects):
the ingestion path is the hottest path of the service and needs none of it. What the middleware
would have given it is done here: HTTPS only, the Host checked against ALLOWED_HOSTS, the
baseline security headers, JSON errors with stable codes.

HTTP statuses of error kinds: the twin of ``fieldlink.cloud.errors`` (apps may not import
``fieldlink.cloud``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.http.request import split_domain_port, validate_host

from fieldlink.devices.credentials import authenticate
from fieldlink.kit.errors import ErrorKind, FieldlinkError, RateLimitedError
from fieldlink.protocol.telemetry import MAX_BODY_BYTES, BatchRefused, decode_batch, inflate
from fieldlink.telemetry.ingest import check_rate, ingest_batch

__all__ = ["TELEMETRY_PATH", "EdgeApp", "handle_telemetry"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX: Final = "/edge/v1/"
TELEMETRY_PATH: Final = "/edge/v1/telemetry"

STATUS: Final[dict[ErrorKind, int]] = {
    "invalid": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}

Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
_ack_encoder: Final = msgspec.json.Encoder()


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    body = json.dumps({"code": code, "message": message, "details": details or {}}).encode()
    return status, body, []


def handle_telemetry(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """One telemetry POST, synchronously (runs in a worker thread): status, body, headers."""
    try:
        device = authenticate(token)
        if encoding == "gzip":
            body = inflate(body)
        elif encoding not in ("", "identity"):
            return _error(415, "encoding_unsupported", "Content-Encoding must be gzip or absent.")
        batch = decode_batch(body, now_ms=int(time.time() * 1000))
        check_rate(device.pk, backlog=batch.backlog, values=len(batch.values))
        try:
            with transaction.atomic():
                ack = ingest_batch(device, batch, client_ip=client_ip)
        except IntegrityError:
            # The same batch committed on another connection between our check and our insert
            # (the receipt's unique key caught it): answer as for any replay.
            with transaction.atomic():
                ack = ingest_batch(device, batch, client_ip=client_ip)
        return 200, _ack_encoder.encode(ack), []
    except BatchRefused as exc:
        details = {} if exc.index is None else {"index": exc.index}
        return _error(413 if exc.kind == "too_large" else 422, exc.code, exc.message, details)
    except RateLimitedError as exc:
        status, payload, _ = _error(429, exc.code, exc.message, exc.details)
        return status, payload, [(b"retry-after", str(exc.retry_after).encode())]
    except FieldlinkError as exc:
        return _error(STATUS[exc.kind], exc.code, exc.message, exc.details)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _handle_in_thread(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    # What Django's request_started/finished signals would do: drop broken or stale connections.
    close_old_connections()
    try:
        return handle_telemetry(token, body, encoding, client_ip)
    finally:
        close_old_connections()


def _refuse_request(scope: Scope, *, secure: bool) -> Reply | None:
    if not secure:
        return _error(403, "https_required", "The edge API is served over HTTPS only.")
    domain, _port = split_domain_port(_header(scope, b"host"))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return _error(400, "bad_host", "Invalid Host header.")
    if scope["path"] != TELEMETRY_PATH:
        return _error(404, "not_found", "No such edge endpoint.")
    if scope["method"] != "POST":
        return _error(405, "method_not_allowed", "Use POST.")
    return None


class EdgeApp:
    """The ASGI application for ``/edge/v1/…``."""

    def __init__(
        self,
        *,
        headers: Callable[..., list[tuple[bytes, bytes]]],
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        # The baseline security headers come from the cloud layer (apps may not import it).
        self.headers = headers
        self.max_body_bytes = max_body_bytes
        # Not thread-sensitive: batches of different devices run in parallel worker threads,
        # each with its own database connection.
        self._run = sync_to_async(_handle_in_thread, thread_sensitive=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        secure = scope.get("scheme") == "https"
        reply = await self._route(scope, receive, secure)
        await self._send(send, reply, secure=secure)

    async def _route(self, scope: Scope, receive: Receive, secure: bool) -> Reply:
        refused = _refuse_request(scope, secure=secure)
        if refused is not None:
            return refused
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "device_credential_invalid", "A device credential is required.")
        body = await self._read(receive)
        if body is None:
            return _error(
                413, "body_too_large", f"The body is larger than {self.max_body_bytes} bytes."
            )
        encoding = _header(scope, b"content-encoding").strip().lower()
        client = scope.get("client")
        client_ip = str(client[0]) if client else ""
        return await self._run(token.strip(), body, encoding, client_ip)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _send(self, send: Send, reply: Reply, *, secure: bool) -> None:
        status, body, extra = reply
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self.headers(secure=secure),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
