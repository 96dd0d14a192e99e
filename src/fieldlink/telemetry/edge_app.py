"""The lean ASGI handler of ``/edge/v1/``: raw body → msgspec → one use case → JSON ack.

It runs in the same process as Django, behind the same ``RequestGuard`` (body cap, refused
methods), but skips Django's request machinery (middleware, URL resolving, request objects):
the ingestion path is the hottest path of the service and needs none of it. What the middleware
would have given it is done here: HTTPS only, the Host checked against ALLOWED_HOSTS, the
baseline security headers, JSON errors with stable codes.

The HTTP status of each error kind is ``kit.errors.HTTP_STATUS``, as for the API and the pages.

Besides the POST endpoints it serves the TUF repository to devices (GET, credential required):
metadata under ``TUF_METADATA_PATH`` and targets under ``TUF_TARGETS_PATH``. Names are checked
against strict patterns before anything is looked up (no ``..``, no ``/`` in metadata names, no
over-long names: all 404); a configuration target is served only to the device it was signed
for (another device gets the same 404 as for a name that does not exist); bundles are streamed
in chunks with their length. Every response carries ``Cache-Control: no-store`` (baseline
headers): ``timestamp.json`` changes in place, and a cache must never freeze a device on it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
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
from fieldlink.kit.logging import get_logger
from fieldlink.protocol.edge import (
    ANNOUNCE_PATH,
    ENROLL_PATH,
    ROTATE_PATH,
    CredentialIssued,
    decode_announce,
    decode_enroll,
)
from fieldlink.protocol.telemetry import MAX_BODY_BYTES, BatchRefused, decode_batch, inflate
from fieldlink.protocol.updates import (
    REPORT_PATH,
    TUF_METADATA_PATH,
    TUF_TARGETS_PATH,
    decode_report,
)
from fieldlink.telemetry.errors import TelemetryUnavailableError
from fieldlink.telemetry.ingest import check_rate, ingest_batch
from fieldlink.updates import repository
from fieldlink.updates import services as update_services

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
# Reports per device and minute: an agent reports on change only, a few times per update.
REPORT_LIMIT: Final = 30
TUF_PREFIXES: Final = (TUF_METADATA_PATH, TUF_TARGETS_PATH)
MAX_TUF_NAME: Final = 200
# "timestamp.json" or "<version>.<role>.json" (role: root, targets, config-bins-0a …).
METADATA_NAME: Final = re.compile(r"^(?:timestamp|[1-9][0-9]{0,9}\.[a-z][a-z0-9-]{0,62})\.json$")
# "<dir>/<sha256>.<file>" (consistent snapshots); the file part never starts with a dot.
TARGET_NAME: Final = re.compile(
    r"^(?:software|config)/[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$"
)
JSON: Final = b"application/json"
log = get_logger(__name__)


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


def _check_report_rate(device_id: object) -> None:
    window = int(time.time() // 60)
    key = f"edge-report:{device_id}:{window}"
    try:
        cache.add(key, 0, timeout=120)
        used = int(cache.incr(key))
    except Exception as exc:  # the store is down: refuse; the agent reports again later
        raise TelemetryUnavailableError("Reports cannot be checked right now.") from exc
    if used > REPORT_LIMIT:
        raise RateLimitedError(
            "Too many reports; retry later.",
            retry_after=60 - int(time.time() % 60) + 1,
            limit="reports_per_device",
        )


def handle_report(token: str, body: bytes, encoding: str, client_ip: str) -> Reply:
    """POST /edge/v1/report: what the device runs, applied and failed at (``DeviceReport``)."""
    try:
        device = authenticate(token)
        report = decode_report(_plain(body, encoding))
        _check_report_rate(device.pk)
        with transaction.atomic():
            ack = update_services.record_report(device, report, client_ip=client_ip)
        return 200, _ack_encoder.encode(ack), []
    except (BatchRefused, RateLimitedError, FieldlinkError) as exc:
        return _refusal(exc)


@dataclass(frozen=True)
class Download:
    """A target too large to hold in memory: sent in chunks, read in a worker thread."""

    length: int
    chunks: Iterator[bytes]


def _no_such_file() -> Reply:
    return _error(404, "not_found", "No such file.")


def _target(device_id: object, name: str) -> Reply | Download:
    blob = repository.open_target(name) if TARGET_NAME.match(name) and ".." not in name else None
    if blob is None:
        return _no_such_file()
    # Configuration targets are per device: another device's is "not found", not "forbidden",
    # so a device learns nothing about its neighbours' configurations.
    if (blob.device_id is not None or blob.path.startswith("config/")) and (
        blob.device_id != device_id
    ):
        return _no_such_file()
    headers = [(b"content-type", b"application/octet-stream")]
    if blob.data is not None:
        return 200, blob.data, headers
    if blob.file is None or not blob.file.is_file() or blob.file.stat().st_size != blob.length:
        log.error("tuf_target_file_unusable", target=blob.path)
        return _error(503, "target_unavailable", "This file cannot be served right now.")
    return Download(blob.length, blob.chunks())


def handle_tuf(token: str, path: str) -> Reply | Download:
    """GET under /edge/v1/tuf/: signed metadata, or a target this device may download."""
    try:
        device = authenticate(token)
        if path.startswith(TUF_METADATA_PATH):
            name = path[len(TUF_METADATA_PATH) :]
            data = repository.read_metadata(name) if METADATA_NAME.match(name) else None
            return _no_such_file() if data is None else (200, data, [])
        return _target(device.pk, path[len(TUF_TARGETS_PATH) :])
    except FieldlinkError as exc:
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
    REPORT_PATH: (handle_report, True),
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


def _get_in_thread(token: str, path: str) -> Reply | Download:
    close_old_connections()
    try:
        return handle_tuf(token, path)
    finally:
        close_old_connections()


def _refuse_request(scope: Scope, *, secure: bool) -> Reply | None:
    if not secure:
        return _error(403, "https_required", "The edge API is served over HTTPS only.")
    domain, _port = split_domain_port(_header(scope, b"host"))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return _error(400, "bad_host", "Invalid Host header.")
    if scope["path"].startswith(TUF_PREFIXES):
        return _refuse_download(scope)
    if scope["path"] not in ROUTES:
        return _error(404, "not_found", "No such edge endpoint.")
    if scope["method"] != "POST":
        return _error(405, "method_not_allowed", "Use POST.")
    return None


def _refuse_download(scope: Scope) -> Reply | None:
    # The repository is read-only for devices; an over-long name is refused before any lookup.
    if len(scope["path"]) > len(TUF_METADATA_PATH) + MAX_TUF_NAME:
        return _no_such_file()
    if scope["method"] != "GET":
        status, body, _ = _error(405, "method_not_allowed", "Use GET.")
        return status, body, [(b"allow", b"GET")]
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
        self._get = sync_to_async(_get_in_thread, thread_sensitive=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        secure = scope.get("scheme") == "https"
        reply = await self._route(scope, receive, secure)
        if isinstance(reply, Download):
            await self._stream(send, reply, secure=secure)
        else:
            await self._send(send, reply, secure=secure)

    async def _route(self, scope: Scope, receive: Receive, secure: bool) -> Reply | Download:
        refused = _refuse_request(scope, secure=secure)
        if refused is not None:
            return refused
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        has_token = scheme.lower() == "bearer" and bool(token)
        if scope["path"].startswith(TUF_PREFIXES):
            if not has_token:
                return _error(401, "device_credential_invalid", "A device credential is required.")
            return await self._get(token.strip(), scope["path"])
        handler, needs_credential = ROUTES[scope["path"]]
        if needs_credential and not has_token:
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
        typed = any(name == b"content-type" for name, _ in extra)
        headers = [
            *([] if typed else [(b"content-type", JSON)]),
            (b"content-length", str(len(body)).encode()),
            *self.headers(secure=secure),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, send: Send, download: Download, *, secure: bool) -> None:
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(download.length).encode()),
            *self.headers(secure=secure),
        ]
        chunks = download.chunks
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                # Closes the file at once when the device went away in the middle.
                await asyncio.to_thread(close)
