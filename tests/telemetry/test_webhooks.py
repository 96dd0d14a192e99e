"""Webhook signing, URL policy (SSRF) and the HTTP transport against a real loopback receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from fieldlink.telemetry import webhooks
from fieldlink.telemetry.webhooks import (
    MAX_ATTEMPTS,
    Outgoing,
    WebhookUrlRefusedError,
    check_url,
    headers_for,
    http_transport,
    next_delay,
    sign,
    verify,
)
from tests.plugins.log_canary import register_canary

SECRET = register_canary(webhooks.generate_secret())


class Receiver(BaseHTTPRequestHandler):
    """A customer's endpoint: checks the signature as the docs tell receivers to."""

    secret = SECRET
    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        valid = verify(self.secret, self.headers[webhooks.SIGNATURE_HEADER], body, now=time.time())
        self.seen.append(
            {
                "valid": valid,
                "event": self.headers[webhooks.EVENT_HEADER],
                "delivery": self.headers[webhooks.DELIVERY_HEADER],
                "host": self.headers["Host"],
                "body": json.loads(body),
            }
        )
        status = self.answers.pop(0) if self.answers else (204 if valid else 401)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    Receiver.answers, Receiver.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/fieldlink", Receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def post(url: str, payload: dict[str, Any], *, secret: str = SECRET) -> webhooks.Outcome:
    body = webhooks.encode_body(payload)
    headers = headers_for(
        secret=secret, event="alarm.opened", delivery_id="d-1", body=body, now=time.time()
    )
    target = check_url(url, allow_loopback=True)
    return http_transport(Outgoing(target=target, headers=headers, body=body))


# -- signature


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    header = sign("flw_k", 1_700_000_000, b'{"a":1}')
    # Recomputed independently of sign().
    mac = hmac.new(b"flw_k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"


def test_tampered_body_fails_verification() -> None:
    header = sign(SECRET, 1000, b'{"value":1}')
    assert verify(SECRET, header, b'{"value":1}', now=1000)
    assert not verify(SECRET, header, b'{"value":2}', now=1000)
    assert not verify(SECRET + "x", header, b'{"value":1}', now=1000)


def test_replayed_old_delivery_fails_timestamp_tolerance() -> None:
    header = sign(SECRET, 1000, b"{}")
    assert verify(SECRET, header, b"{}", now=1000 + 300)
    assert not verify(SECRET, header, b"{}", now=1000 + 301)
    assert not verify(SECRET, "v1=abc", b"{}", now=1000)
    assert not verify(SECRET, "t=soon,v1=abc", b"{}", now=1000)


def test_either_of_two_signatures_verifies_during_rotation() -> None:
    new, old = "flw_new_secret", "flw_old_secret"
    header = sign(new, 5, b"{}") + "," + sign(old, 5, b"{}").split(",", 1)[1]
    assert verify(new, header, b"{}", now=5)
    assert verify(old, header, b"{}", now=5)
    assert not verify("flw_other", header, b"{}", now=5)


# -- delivery against a real receiver


def test_receiver_verifies_signature_of_a_real_delivery(
    receiver: tuple[str, type[Receiver]],
) -> None:
    url, handler = receiver
    outcome = post(url, {"type": "alarm.opened", "data": {"value": 101.5}})
    assert outcome.ok
    assert outcome.status == 204
    assert handler.seen[0]["valid"] is True
    assert handler.seen[0]["event"] == "alarm.opened"
    assert handler.seen[0]["delivery"] == "d-1"
    assert handler.seen[0]["host"] == url.split("/")[2]
    assert handler.seen[0]["body"]["data"] == {"value": 101.5}


def test_receiver_refuses_wrong_secret(receiver: tuple[str, type[Receiver]]) -> None:
    url, handler = receiver
    outcome = post(url, {"x": 1}, secret="flw_" + "wrong" * 8)
    assert handler.seen[0]["valid"] is False
    assert outcome.status == 401
    assert not outcome.ok
    assert outcome.error == "HTTP 401"


def test_redirect_to_metadata_service_not_followed(receiver: tuple[str, type[Receiver]]) -> None:
    url, handler = receiver
    handler.answers = [302]
    outcome = post(url, {"x": 1})
    assert outcome.status == 302
    assert not outcome.ok
    assert outcome.error == "redirect not followed"
    assert len(handler.seen) == 1


def test_unreachable_receiver_is_an_error_not_an_exception() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), Receiver) as server:
        port = server.server_address[1]
    outcome = post(f"http://127.0.0.1:{port}/gone", {"x": 1})
    assert outcome.status is None
    assert "ConnectError" in outcome.error


# -- retry schedule


def test_retry_schedule_six_attempts_about_an_hour_with_jitter() -> None:
    rng = random.Random(7)  # noqa: S311  (jitter, not a secret)
    delays = [next_delay(n, rng) for n in range(1, MAX_ATTEMPTS)]
    assert MAX_ATTEMPTS == 6
    assert next_delay(MAX_ATTEMPTS, rng) is None
    assert all(d is not None for d in delays)
    total = sum(d for d in delays if d is not None)
    assert 0.8 * 3750 <= total <= 1.2 * 3750
    for base, delay in zip(webhooks.RETRY_DELAYS, delays, strict=True):
        assert delay is not None
        assert 0.8 * base <= delay <= 1.2 * base
    # Jittered: two webhooks failing together do not retry in lockstep.
    first, second = random.Random(1), random.Random(2)  # noqa: S311  (jitter, not a secret)
    assert next_delay(1, first) != next_delay(1, second)


# -- where a webhook may point (SSRF)


def fixed(*addresses: str) -> webhooks.Resolver:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("https://metadata.example/latest", ("169.254.169.254",)),  # cloud metadata
        ("https://intranet.example/", ("10.1.2.3",)),
        ("https://router.example/", ("192.168.0.1",)),
        ("https://db.example/", ("172.16.5.5",)),
        ("https://cgnat.example/", ("100.64.0.1",)),
        ("https://localhost/", ("127.0.0.1",)),
        ("https://v6-loopback.example/", ("::1",)),
        ("https://v6-private.example/", ("fd00::1",)),
        ("https://v6-link-local.example/", ("fe80::1%eth0",)),
        ("https://mapped.example/", ("::ffff:10.0.0.1",)),
        ("https://zero.example/", ("0.0.0.0",)),  # noqa: S104  (an address refused, not bound)
        ("https://multicast.example/", ("224.0.0.1",)),
        ("https://mixed.example/", ("93.184.215.14", "10.0.0.1")),  # one bad answer is enough
    ],
)
def test_ssrf_to_internal_addresses_refused(url: str, addresses: tuple[str, ...]) -> None:
    with pytest.raises(WebhookUrlRefusedError):
        check_url(url, allow_loopback=False, resolver=fixed(*addresses))


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plaintext
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "https://user:pw@hooks.example.com/x",
        "https://hooks.example.com/x#frag",
        "https:///nohost",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com/" + "a" * 2000,
    ],
)
def test_malformed_or_plaintext_urls_refused(url: str) -> None:
    with pytest.raises(WebhookUrlRefusedError):
        check_url(url, allow_loopback=False, resolver=fixed("93.184.215.14"))


def test_loopback_only_when_allowed_and_plain_http_only_there() -> None:
    with pytest.raises(WebhookUrlRefusedError):
        check_url("http://127.0.0.1:8080/h", allow_loopback=False, resolver=fixed("127.0.0.1"))
    target = check_url("http://127.0.0.1:8080/h", allow_loopback=True, resolver=fixed("127.0.0.1"))
    assert (target.address, target.port) == ("127.0.0.1", 8080)
    with pytest.raises(WebhookUrlRefusedError):
        check_url("http://hooks.example.com/", allow_loopback=True, resolver=fixed("93.184.215.14"))


def test_public_https_accepted_and_pinned_to_checked_address() -> None:
    target = check_url(
        "https://hooks.example.com/fieldlink", allow_loopback=False, resolver=fixed("93.184.215.14")
    )
    assert target.address == "93.184.215.14"
    assert target.port == 443
    assert str(webhooks._pinned_url(target)) == "https://93.184.215.14/fieldlink"


def test_unresolvable_host_refused() -> None:
    with pytest.raises(WebhookUrlRefusedError):
        check_url("https://does-not-exist.invalid/", allow_loopback=False, resolver=fixed())
