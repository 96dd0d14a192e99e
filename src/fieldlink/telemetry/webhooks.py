"""Outgoing webhooks: URL policy (no SSRF), signing, one delivery attempt, retry schedule.

No Django here: the use cases in ``alarm_services`` keep the rows; this module decides and
talks HTTP through an injected ``Transport`` (the default one is httpx).

Signature: ``Fieldlink-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>``.
A receiver recomputes the HMAC over the raw body with its secret, compares in constant time
and refuses timestamps older than a few minutes (``verify`` does exactly that), so a captured
delivery cannot be replayed later. Each attempt is signed afresh; the body and the
``Fieldlink-Delivery`` id stay the same, so receivers can deduplicate retries.

Where a webhook may point (server-side request forgery): ``https`` only, to a host whose every
DNS address is public (``ipaddress.is_global``): private, loopback, link-local (cloud metadata
at 169.254.169.254), CGNAT, multicast and reserved ranges are refused, at creation and again at
each attempt, and the connection goes to the address that was checked (SNI and ``Host`` carry
the name), so a DNS answer that changes in between cannot redirect it. Redirects are never
followed. Only tests, through a setting, may use ``http`` to a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from fieldlink.kit.errors import FieldlinkError

__all__ = [
    "MAX_ATTEMPTS",
    "Outcome",
    "Outgoing",
    "Target",
    "WebhookUrlRefusedError",
    "check_url",
    "encode_body",
    "generate_secret",
    "headers_for",
    "http_transport",
    "next_delay",
    "sign",
    "verify",
]

SECRET_PREFIX: Final = "flw_"  # noqa: S105  (a prefix, redacted in logs like flk_)
SIGNATURE_HEADER: Final = "Fieldlink-Signature"
EVENT_HEADER: Final = "Fieldlink-Event"
DELIVERY_HEADER: Final = "Fieldlink-Delivery"
TOLERANCE_SECONDS: Final = 300
URL_MAX_LENGTH: Final = 2000

# Six attempts in all: the first at once, then after about 30 s, 2, 5, 15 and 40 minutes
# (≈ 62 minutes), each ±20 % so that many failed deliveries do not retry in lockstep.
RETRY_DELAYS: Final = (30.0, 120.0, 300.0, 900.0, 2400.0)
MAX_ATTEMPTS: Final = len(RETRY_DELAYS) + 1
JITTER: Final = 0.2

CONNECT_TIMEOUT: Final = 5.0
TOTAL_TIMEOUT: Final = 10.0
MAX_RESPONSE_BYTES: Final = 64 * 1024  # read and kept at most (an excerpt of it)
EXCERPT_CHARS: Final = 500


class WebhookUrlRefusedError(FieldlinkError):
    code = "webhook_url_refused"
    kind = "invalid"


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, tolerance: int = TOLERANCE_SECONDS
) -> bool:
    """What a receiver does: the right HMAC over this body, signed recently."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


def encode_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def headers_for(
    *, secret: str, event: str, delivery_id: str, body: bytes, now: float
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Fieldlink-Webhooks/1",
        SIGNATURE_HEADER: sign(secret, int(now), body),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
    }


def next_delay(attempt: int, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after failed attempt number ``attempt`` (1-based); None: give up."""
    if attempt < 1 or attempt >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS[attempt - 1]
    return base * (1 + (rng or random.SystemRandom()).uniform(-JITTER, JITTER))


# -- where a webhook may point

Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefusedError(
            "The webhook's host name does not resolve.", details={"host": host}
        ) from exc
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    address: str  # the checked address the connection goes to


def check_url(url: str, *, allow_loopback: bool, resolver: Resolver = system_resolver) -> Target:
    """The URL's target if a webhook may be delivered there, else WebhookUrlRefusedError."""
    if len(url) > URL_MAX_LENGTH:
        raise WebhookUrlRefusedError(f"The URL is longer than {URL_MAX_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefusedError("The URL is malformed.") from exc
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("https", "http") or not host:
        raise WebhookUrlRefusedError("The URL must be https://host/path.")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefusedError("The URL must not carry a user name or password.")
    if parts.fragment:
        raise WebhookUrlRefusedError("The URL must not have a #fragment.")
    port = port or (443 if scheme == "https" else 80)
    addresses = list(resolver(host, port))
    if not addresses:
        raise WebhookUrlRefusedError("The webhook's host name does not resolve.")
    loopback_only = True
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback and allow_loopback:
            continue
        loopback_only = False
        if not ip.is_global or ip.is_multicast:
            raise WebhookUrlRefusedError(
                "The URL points to a private, loopback, link-local or reserved address; "
                "webhooks go to public addresses only.",
                details={"host": host},
            )
    if scheme != "https" and not loopback_only:
        raise WebhookUrlRefusedError("The URL must use https.")
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


# -- one attempt


@dataclass(frozen=True)
class Outgoing:
    target: Target
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    duration_ms: int
    error: str = ""
    response_excerpt: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Transport = Callable[[Outgoing], Outcome]


def _pinned_url(target: Target) -> httpx.URL:
    return httpx.URL(target.url).copy_with(host=target.address, port=target.port)


def http_transport(request: Outgoing) -> Outcome:
    """POST with httpx to the checked address: no redirects, no proxies, bounded in time/size."""
    target = request.target
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    started = time.monotonic()
    timeout = httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT)
    try:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute deliveries.
        with (
            httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client,
            client.stream(
                "POST",
                _pinned_url(target),
                headers={**request.headers, "Host": host_header},
                content=request.body,
                extensions={"sni_hostname": target.host},
            ) as response,
        ):
            received = bytearray()
            for chunk in response.iter_bytes():
                received.extend(chunk)
                if len(received) >= MAX_RESPONSE_BYTES or _elapsed(started) > TOTAL_TIMEOUT:
                    break
            status = response.status_code
    except httpx.HTTPError as exc:
        return Outcome(None, _ms(started), error=f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS])
    excerpt = received[:EXCERPT_CHARS].decode("utf-8", "replace")
    error = ""
    if 300 <= status < 400:
        error = "redirect not followed"
    elif not 200 <= status < 300:
        error = f"HTTP {status}"
    return Outcome(status, _ms(started), error=error, response_excerpt=excerpt)


def _elapsed(started: float) -> float:
    return time.monotonic() - started


def _ms(started: float) -> int:
    return round(_elapsed(started) * 1000)
