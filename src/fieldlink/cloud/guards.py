"""Raw ASGI layers in front of Django, for what must happen before Django reads a request.

Django's ASGI handler reads the whole body into memory or a temp file before any middleware
runs, so the body cap must live here to answer 413 without reading the body. The plain-HTTP
listener lives here too: it must refuse API calls without ever handing their body to Django.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
# Machine clients live under these paths: they get JSON errors, never pages or redirects.
API_PREFIXES = ("/api/", "/edge/", "/metrics")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


# The raw responses below carry no page content, so their policy can be the strictest there is.
RAW_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def baseline_headers(*, secure: bool) -> list[tuple[bytes, bytes]]:
    """The security headers every response carries, for responses built outside Django."""
    headers = [
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", RAW_CSP),
        ("X-Frame-Options", settings.X_FRAME_OPTIONS),
        ("Referrer-Policy", settings.SECURE_REFERRER_POLICY),
        ("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Permissions-Policy", settings.PERMISSIONS_POLICY),
        ("Cache-Control", "no-store"),
    ]
    # RFC 6797 §7.2: HSTS must not be sent over plain HTTP; browsers ignore it there anyway.
    if secure and settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        headers.insert(0, ("Strict-Transport-Security", value))
    return [(name.lower().encode(), value.encode()) for name, value in headers]


async def send_json(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    secure: bool,
    extra: Iterable[tuple[bytes, bytes]] = (),
    close: bool = True,
) -> None:
    body = json.dumps({"code": code, "message": message, "details": {}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *baseline_headers(secure=secure),
        *extra,
    ]
    if close:
        # The body we did not read is still on the wire; the connection cannot be reused.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | str | None:
    """The declared length, None if absent, or "invalid" if it cannot be trusted."""
    values = [value for name, value in scope["headers"] if name == b"content-length"]
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].isdigit():
        return "invalid"
    return int(values[0])


class RequestGuard:
    """Refuses TRACE-like methods and bodies over the cap before the application sees them."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"
        if scope["method"] in REFUSED_METHODS:
            await send_json(
                send,
                405,
                "method_not_allowed",
                "This method is not allowed.",
                secure=secure,
                extra=[(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")],
            )
            return
        declared = _content_length(scope)
        if declared == "invalid":
            await send_json(send, 400, "bad_request", "Invalid Content-Length.", secure=secure)
            return
        if isinstance(declared, int) and declared > self.max_body_bytes:
            await self._too_large(send, secure)
            return
        await self.app(scope, *self._capped(receive, send, secure))

    async def _too_large(self, send: Send, secure: bool) -> None:
        await send_json(
            send,
            413,
            "payload_too_large",
            f"The request body is larger than {self.max_body_bytes} bytes.",
            secure=secure,
        )

    def _capped(self, receive: Receive, send: Send, secure: bool) -> tuple[Receive, Send]:
        # Chunked bodies declare no length: count while streaming and stop at the cap.
        received = 0
        refused = False

        async def capped_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    await self._too_large(send, secure)
                    # To Django this is a client that went away: it stops without answering.
                    return {"type": "http.disconnect"}
            return message

        async def gated_send(message: Message) -> None:
            if not refused:
                await send(message)

        return capped_receive, gated_send


class HTTPSRedirect:
    """The plain-HTTP listener: pages are redirected to HTTPS, API calls are refused unread."""

    def __init__(self, *, allowed_hosts: list[str], https_port: int) -> None:
        self.allowed_hosts = allowed_hosts
        self.https_port = https_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if is_api_path(path):
            await send_json(
                send,
                403,
                "https_required",
                "The API is served over HTTPS only; nothing sent over plain HTTP was processed.",
                secure=False,
            )
            return
        host = _header(scope, b"host")
        domain, _port = split_domain_port(host or "")
        if not domain or not validate_host(domain, self.allowed_hosts):
            await send_json(send, 400, "bad_request", "Unknown host.", secure=False)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(
                send, 403, "https_required", "Use HTTPS; nothing was processed.", secure=False
            )
            return
        authority = domain if ":" not in domain or domain.startswith("[") else f"[{domain}]"
        if self.https_port != 443:
            authority = f"{authority}:{self.https_port}"
        target = scope.get("raw_path") or path.encode()
        query = scope.get("query_string", b"")
        location = b"https://" + authority.encode() + target + (b"?" + query if query else b"")
        await send(
            {
                "type": "http.response.start",
                "status": 301,
                "headers": [
                    (b"location", location),
                    (b"content-length", b"0"),
                    *baseline_headers(secure=False),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
