"""The raw ASGI guards, driven directly: they must answer before any body byte is read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fieldlink.cloud.guards import HTTPSRedirect, RequestGuard

Message = dict[str, Any]


def _scope(
    method: str = "GET",
    path: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    scheme: str = "https",
    query: bytes = b"",
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "scheme": scheme,
        "headers": headers or [(b"host", b"localhost")],
    }


class Recorder:
    def __init__(self, body_chunks: list[bytes] | None = None) -> None:
        self.sent: list[Message] = []
        self.chunks = list(body_chunks or [])
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the application must not be reached")


def _run(app: Any, scope: dict[str, Any], recorder: Recorder) -> None:
    asyncio.run(app(scope, recorder.receive, recorder.send))


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
def test_trace_method_refused_before_the_application(method: str) -> None:
    recorder = Recorder()
    _run(RequestGuard(_never_called, max_body_bytes=1024), _scope(method), recorder)
    assert recorder.status == 405
    assert recorder.json["code"] == "method_not_allowed"
    assert "TRACE" not in recorder.headers["allow"]
    assert recorder.reads == 0


def test_oversized_declared_body_gets_413_without_reading_a_byte() -> None:
    recorder = Recorder([b"x" * 10])
    headers = [(b"host", b"localhost"), (b"content-length", b"10485760")]
    _run(
        RequestGuard(_never_called, max_body_bytes=1024),
        _scope("POST", "/api/v1/x", headers),
        recorder,
    )
    assert recorder.status == 413
    assert recorder.json == {
        "code": "payload_too_large",
        "message": recorder.json["message"],
        "details": {},
    }
    assert recorder.headers["connection"] == "close"
    assert recorder.reads == 0


def test_chunked_body_over_the_cap_is_cut_off_at_the_cap() -> None:
    seen: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        # What a real app would answer after reading; the guard must swallow it.
        await send({"type": "http.response.start", "status": 200, "headers": []})

    chunks = [b"a" * 600, b"b" * 600, b"c" * 600, b"d" * 600]
    recorder = Recorder(chunks)
    _run(RequestGuard(app, max_body_bytes=1024), _scope("POST", "/api/v1/x"), recorder)
    assert recorder.status == 413
    assert [m["status"] for m in recorder.sent if "status" in m] == [413]
    assert seen[-1]["type"] == "http.disconnect"
    assert recorder.reads == 2  # stopped at the chunk that crossed the cap; two never read


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3"])
def test_invalid_content_length_is_a_clear_400(value: bytes) -> None:
    recorder = Recorder()
    headers = [(b"host", b"localhost"), (b"content-length", value)]
    _run(RequestGuard(_never_called, max_body_bytes=1024), _scope("POST", "/", headers), recorder)
    assert recorder.status == 400
    assert recorder.json["code"] == "bad_request"


def test_conflicting_content_lengths_are_refused_as_smuggling() -> None:
    recorder = Recorder()
    headers = [(b"host", b"localhost"), (b"content-length", b"5"), (b"content-length", b"500")]
    _run(RequestGuard(_never_called, max_body_bytes=1024), _scope("POST", "/", headers), recorder)
    assert recorder.status == 400


def test_small_body_passes_through_untouched() -> None:
    async def echo(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    recorder = Recorder([b"hello"])
    _run(RequestGuard(echo, max_body_bytes=1024), _scope("POST", "/"), recorder)
    assert recorder.status == 200
    assert recorder.sent[1]["body"] == b"hello"


def _redirect() -> HTTPSRedirect:
    return HTTPSRedirect(allowed_hosts=["localhost", "127.0.0.1", "[::1]"], https_port=8443)


def test_plain_http_page_redirects_to_https_on_the_same_host() -> None:
    recorder = Recorder()
    scope = _scope("GET", "/login/", [(b"host", b"localhost:8080")], scheme="http", query=b"a=1")
    _run(_redirect(), scope, recorder)
    assert recorder.status == 301
    assert recorder.headers["location"] == "https://localhost:8443/login/?a=1"
    assert "strict-transport-security" not in recorder.headers  # RFC 6797 §7.2


def test_plain_http_ipv6_host_redirect_keeps_brackets() -> None:
    recorder = Recorder()
    _run(_redirect(), _scope("GET", "/", [(b"host", b"[::1]:8080")], scheme="http"), recorder)
    assert recorder.headers["location"] == "https://[::1]:8443/"


def test_plain_http_redirect_to_standard_port_omits_it() -> None:
    recorder = Recorder()
    app = HTTPSRedirect(allowed_hosts=["plant.example"], https_port=443)
    _run(app, _scope("GET", "/x", [(b"host", b"plant.example")], scheme="http"), recorder)
    assert recorder.headers["location"] == "https://plant.example/x"


@pytest.mark.parametrize("path", ["/api/v1/me", "/edge/v1/telemetry", "/metrics"])
def test_plain_http_api_call_is_refused_and_its_body_never_read(path: str) -> None:
    recorder = Recorder([b'{"password": "x"}'])
    _run(_redirect(), _scope("POST", path, scheme="http"), recorder)
    assert recorder.status == 403
    assert recorder.json["code"] == "https_required"
    assert recorder.reads == 0


def test_plain_http_open_redirect_via_host_header_refused() -> None:
    recorder = Recorder()
    _run(_redirect(), _scope("GET", "/", [(b"host", b"evil.example")], scheme="http"), recorder)
    assert recorder.status == 400
    assert "location" not in recorder.headers


def test_plain_http_form_post_is_not_processed() -> None:
    recorder = Recorder([b"a=b"])
    _run(_redirect(), _scope("POST", "/login/", [(b"host", b"localhost")], scheme="http"), recorder)
    assert recorder.status == 403
    assert recorder.reads == 0
