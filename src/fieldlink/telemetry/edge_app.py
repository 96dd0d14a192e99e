"""The lean ASGI handler of ``/edge/v1/``: raw body → msgspec → one use case → JSON ack.

It runs in the same process as Django, behind the same ``RequestGuard`` (body cap, refused
methods), but skips Django's request machinery (middleware, URL resolving, request objects):
the ingestion path is the hottest path of the service and needs none of it. What the middleware
would have given it is done here: HTTPS only, the Host checked against ALLOWED_HOSTS, the
baseline security headers, JSON errors with stable codes.

The HTTP status of each error kind is ``kit.errors.HTTP_STATUS``, as for the API and the pages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, close_old_connections, transaction
from django.http.request import split_domain_port, validate_host

from fieldlink.devices import edge_services
from fieldlink.devices.credentials import IssuedSecret, authenticate
from fieldlink.kit.errors import HTTP_STATUS, FieldlinkError, RateLimitedError
from fieldlink.protocol.edge import (
    ANNOUNCE_PATH,
    ENROLL_PATH,
    ROTATE_PATH,
    CredentialIssued,
    decode_announce,
    decode_enroll,
)
from fieldlink.protocol.telemetry import MAX_BODY_BYTES, BatchRefused, decode_batch, inflate
from fieldlink.telemetry.errors import TelemetryUnavailableError
from fieldlink.telemetry.ingest import check_rate, ingest_batch

__all__ = ["ROUTES", "TELEMETRY_PATH", "EdgeApp", "handle_telemetry"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX: Final = "/edge/v1/"
TELEMETRY_PATH: Final = "/edge/v1/telemetry"


Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
_ack_encoder: Final = msgspec.json.Encoder()
# Enrollment attempts per client address and minute: codes are 256 random bits, so this is not
# what keeps them safe; it keeps a misbehaving script from hammering the database.
ENROLL_LIMIT: Final = 20


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    body = json.dumps({"code": code, "message": message, "details": details or {}}).encode()
    return status, body, []


def handle_telemetry(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """One telemetry POST, synchronously (runs in a worker thread): status, body, headers."""
    try:
        device = authenticate(token)
        batch = decode_batch(_plain(body, encoding), now_ms=int(time.time() * 1000))
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
    except (BatchRefused, RateLimitedError, FieldlinkError) as exc:
        return _refusal(exc)


def _refusal(exc: Exception) -> Reply:
    if isinstance(exc, BatchRefused):
        details = {} if exc.index is None else {"index": exc.index}
        status = {"too_large": 413, "unsupported": 415}.get(exc.kind, 422)
        return _error(status, exc.code, exc.message, details)
    if isinstance(exc, RateLimitedError):
        status, payload, _ = _error(429, exc.code, exc.message, exc.details)
        return status, payload, [(b"retry-after", str(exc.retry_after).encode())]
    if isinstance(exc, FieldlinkError):
        return _error(HTTP_STATUS[exc.kind], exc.code, exc.message, exc.details)
    raise exc


def _plain(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return inflate(body)
    if encoding not in ("", "identity"):
        raise BatchRefused(
            "encoding_unsupported", "Content-Encoding must be gzip or absent.", kind="unsupported"
        )
    return body


def _issued(issued: IssuedSecret) -> Reply:
    payload = CredentialIssued(
        device_id=str(issued.device.pk), device_name=issued.device.name, credential=issued.secret
    )
    return 200, _ack_encoder.encode(payload), []


def _check_enroll_rate(client_ip: str) -> None:
    window = int(time.time() // 60)
    key = f"edge-enroll:{client_ip}:{window}"
    try:
        cache.add(key, 0, timeout=120)
        used = int(cache.incr(key))
    except Exception as exc:  # the store is down: refuse rather than let it through
        raise TelemetryUnavailableError("Enrollment cannot be checked right now.") from exc
    if used > ENROLL_LIMIT:
        raise RateLimitedError(
            "Too many enrollment attempts; retry later.",
            retry_after=60 - int(time.time() % 60) + 1,
            limit="enroll_per_address",
        )


def handle_enroll(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """POST /edge/v1/enroll: a one-time code (no credential yet) for the device credential."""
    try:
        _check_enroll_rate(client_ip)
        request = decode_enroll(_plain(body, encoding))
        with transaction.atomic():
            issued = edge_services.enroll(
                request.code, software_version=request.software_version, client_ip=client_ip
            )
        return _issued(issued)
    except (BatchRefused, RateLimitedError, FieldlinkError) as exc:
        return _refusal(exc)


def handle_rotate(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """POST /edge/v1/credential: the device asks for its next credential (outbound only)."""
    try:
        with transaction.atomic():
            device = authenticate(token)
            issued = edge_services.rotate_credential(device, client_ip=client_ip)
        return _issued(issued)
    except (BatchRefused, RateLimitedError, FieldlinkError) as exc:
        return _refusal(exc)


def handle_announce(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """POST /edge/v1/announce: the instruments the device reads (discovery)."""
    try:
        device = authenticate(token)
        message = decode_announce(_plain(body, encoding))
        with transaction.atomic():
            ack = edge_services.announce(device, message, client_ip=client_ip)
        return 200, _ack_encoder.encode(ack), []
    except (BatchRefused, RateLimitedError, FieldlinkError) as exc:
        return _refusal(exc)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


Handler = Callable[[str, bytes, str, str], Reply]
# path -> (handler, needs a device credential)
ROUTES: Final[dict[str, tuple[Handler, bool]]] = {
    TELEMETRY_PATH: (handle_telemetry, True),
    ANNOUNCE_PATH: (handle_announce, True),
    ROTATE_PATH: (handle_rotate, True),
    ENROLL_PATH: (handle_enroll, False),
}


def _handle_in_thread(
    handler: Handler, token: str, body: bytes, encoding: str, client_ip: str
) -> Reply:
    # What Django's request_started/finished signals would do: drop broken or stale connections.
    close_old_connections()
    try:
        return handler(token, body, encoding, client_ip)
    finally:
        close_old_connections()


def _refuse_request(scope: Scope, *, secure: bool) -> Reply | None:
    if not secure:
        return _error(403, "https_required", "The edge API is served over HTTPS only.")
    domain, _port = split_domain_port(_header(scope, b"host"))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return _error(400, "bad_host", "Invalid Host header.")
    if scope["path"] not in ROUTES:
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
        handler, needs_credential = ROUTES[scope["path"]]
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        if needs_credential and (scheme.lower() != "bearer" or not token):
            return _error(401, "device_credential_invalid", "A device credential is required.")
        body = await self._read(receive)
        if body is None:
            return _error(
                413, "body_too_large", f"The body is larger than {self.max_body_bytes} bytes."
            )
        encoding = _header(scope, b"content-encoding").strip().lower()
        client = scope.get("client")
        client_ip = str(client[0]) if client else ""
        return await self._run(handler, token.strip(), body, encoding, client_ip)

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
