"""The real ``fieldlink serve`` over real TLS on loopback: headers, cookies, limits, redirects."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fieldlink.kit.tls import ensure_local_pki
from tests.support.server import RunningServer, run_server

HSTS_MIN = 31_536_000


def _raw_request(server: RunningServer, data: bytes, *, read_timeout: float = 10) -> bytes:
    context = server.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", server.https_port), timeout=read_timeout) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        chunks = []
        while True:
            try:
                chunk = tls.recv(65536)
            except (TimeoutError, ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def assert_security_baseline(response: httpx.Response) -> None:
    headers = response.headers
    hsts = headers.get("strict-transport-security", "")
    match = re.search(r"max-age=(\d+)", hsts)
    assert match, f"HSTS missing: {hsts!r}"
    assert int(match.group(1)) >= HSTS_MIN
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp or "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") in {"same-origin", "no-referrer", "strict-origin"}
    assert headers.get("cross-origin-opener-policy") == "same-origin"
    assert headers.get("x-frame-options") == "DENY"
    assert "server" not in headers, "no server banner"


@pytest.mark.parametrize(
    ("method", "path", "status", "extra_headers"),
    [
        ("GET", "/", 200, {}),
        ("GET", "/accounts/login/", 200, {}),
        ("GET", "/accounts/login", 301, {}),  # APPEND_SLASH redirect
        ("GET", "/no-such-page/", 404, {}),
        ("GET", "/api/v1/no-such-route", 404, {}),
        ("GET", "/api/v1/openapi.json", 200, {}),
        ("GET", "/.well-known/security.txt", 200, {}),
        ("GET", "/manifest.webmanifest", 200, {}),
        ("GET", "/static/fieldlink/app.css", 200, {}),
        ("GET", "/healthz", 200, {}),
        ("GET", "/metrics", 401, {}),
        ("TRACE", "/", 405, {}),
        ("POST", "/", 403, {}),  # CSRF refusal
        ("POST", "/api/v1/ops/version", 405, {}),
        ("GET", "/", 400, {"Host": "evil.example"}),
        ("POST", "/api/v1/ops/version", 413, {"Content-Length": "99999999"}),
    ],
)
def test_every_response_carries_the_security_baseline(
    server: RunningServer, method: str, path: str, status: int, extra_headers: dict[str, str]
) -> None:
    if "Content-Length" in extra_headers:
        raw = _raw_request(
            server,
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {extra_headers['Content-Length']}\r\n\r\n".encode(),
        )
        response = _parse_raw(raw)
    else:
        with server.client(follow_redirects=False) as client:
            response = client.request(method, path, headers=extra_headers)
    assert response.status_code == status
    assert_security_baseline(response)


def _parse_raw(raw: bytes) -> httpx.Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    return httpx.Response(status, headers=headers, content=body)


def test_api_errors_share_one_body_shape(server: RunningServer) -> None:
    with server.client() as client:
        for method, path in [("GET", "/api/v1/no-such-route"), ("POST", "/api/v1/ops/version")]:
            body = client.request(method, path).json()
            assert set(body) == {"code", "message", "details"}
            assert isinstance(body["code"], str)
            assert body["code"]


def test_unknown_host_header_is_400(server: RunningServer) -> None:
    with server.client() as client:
        response = client.get("/", headers={"Host": "attacker.example"})
    assert response.status_code == 400
    assert "attacker.example" not in response.text


def test_oversized_body_gets_413_before_the_body_is_sent(server: RunningServer) -> None:
    # Only the headers go out; a server that waited for the 64 MiB body would time out.
    raw = _raw_request(
        server,
        b"POST /api/v1/ops/version HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n",
        read_timeout=5,
    )
    response = _parse_raw(raw)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_chunked_body_over_the_cap_gets_413(server: RunningServer) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536

    with server.client() as client:
        response = client.post("/api/v1/ops/version", content=body())
    assert response.status_code == 413


def test_session_and_csrf_cookies_are_host_prefixed_secure_and_samesite(
    server: RunningServer,
) -> None:
    with server.client() as client:
        response = client.get("/accounts/login/")
    cookies = response.headers.get_list("set-cookie")
    csrf = next(c for c in cookies if c.startswith("__Host-fieldlink-csrf="))
    attributes = {part.strip().split("=")[0].lower() for part in csrf.split(";")[1:]}
    assert {"secure", "path", "samesite"} <= attributes
    assert "domain" not in attributes  # __Host- forbids Domain
    assert "samesite=strict" in csrf.lower()
    assert "path=/" in csrf.lower()


def test_tls_1_0_and_1_1_refused_1_2_and_1_3_accepted(server: RunningServer) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(server.ca_cert)
        with warnings.catch_warnings():
            # Building a TLS 1.0/1.1 client is the point of the test; Python warns about it.
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # make the client really offer it
        with (
            socket.create_connection(("127.0.0.1", server.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return str(tls.version())

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            handshake(old)


def test_client_that_does_not_trust_the_ca_is_refused(server: RunningServer) -> None:
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=True) as client:
        client.get(server.base_url + "/")


def test_curl_verifies_the_server_against_the_local_ca(server: RunningServer) -> None:
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(server.ca_cert),
            server.base_url + "/",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"Fieldlink" in result.stdout


def test_plain_http_redirects_pages_to_https(server: RunningServer) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.get(f"http://localhost:{server.http_port}/accounts/login/?next=/x")
    assert response.status_code == 301
    assert (
        response.headers["location"]
        == f"https://localhost:{server.https_port}/accounts/login/?next=/x"
    )


def test_plain_http_api_call_is_refused(server: RunningServer) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"http://localhost:{server.http_port}/api/v1/ops/version", json={"password": "x"}
        )
    assert response.status_code == 403
    assert response.json()["code"] == "https_required"


@pytest.mark.backend  # the server process migrates and reads its own database
def test_healthz_and_readyz(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_metrics_require_the_token(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = client.get("/metrics", headers={"Authorization": f"Bearer {server.metrics_token}"})
    assert good.status_code == 200
    assert "fieldlink_http_requests_total" in good.text


def test_openapi_document_is_openapi_3(server: RunningServer) -> None:
    with server.client() as client:
        document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/ops/version" in document["paths"]


def test_security_txt_follows_rfc_9116(server: RunningServer) -> None:
    with server.client() as client:
        response = client.get("/.well-known/security.txt")
    assert response.headers["content-type"].startswith("text/plain")
    fields = dict(
        line.split(": ", 1) for line in response.text.splitlines() if line and line[0] != "#"
    )
    assert fields["Contact"].startswith("https://")
    assert fields["Canonical"] == f"{server.base_url}/.well-known/security.txt"
    assert "en" in fields["Preferred-Languages"]
    with server.client() as client:
        assert client.get(fields["Contact"].replace(server.base_url, "")).status_code == 200


def test_access_log_is_json_and_scrubs_secrets_in_query_strings(
    server: RunningServer, canary: object
) -> None:
    secret = canary("query-token")  # type: ignore[operator]
    # A raw socket, not httpx: httpx itself logs request URLs in this (the client's) process.
    raw = _raw_request(
        server,
        f"GET /no-such-page/?token={secret}&page=2 HTTP/1.1\r\nHost: localhost\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert _parse_raw(raw).status_code == 404
    time.sleep(0.3)
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.strip()]
    assert lines, "the server wrote no log lines"
    assert secret not in server.log_text()
    assert any("/no-such-page/" in json.dumps(line) for line in lines)


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(server: RunningServer) -> None:
    with server.client() as client:
        client.get("/healthz?probe=untrusted", headers={"X-Forwarded-For": "203.0.113.66"})
    time.sleep(0.3)
    assert "203.0.113.66" not in server.log_text()


def test_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    with (
        run_server(tmp_path, {"FIELDLINK_TRUSTED_PROXIES": "127.0.0.1/32"}) as proxied,
        proxied.client() as client,
    ):
        client.get("/healthz?probe=trusted", headers={"X-Forwarded-For": "203.0.113.77"})
        time.sleep(0.3)
        assert "203.0.113.77" in proxied.log_text()


def test_configured_certificate_is_served_instead_of_the_local_ca(tmp_path: Path) -> None:
    # Stands in for a CA-issued certificate: issued by a CA the server did not make itself.
    issued = ensure_local_pki(tmp_path / "external", ["localhost"])
    env = {
        "FIELDLINK_TLS_CERT": str(issued.server_cert),
        "FIELDLINK_TLS_KEY": str(issued.server_key),
    }
    with run_server(tmp_path / "var", env, ca_cert=issued.ca_cert) as served:
        context = ssl.create_default_context(cafile=str(issued.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", served.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert not (tmp_path / "var" / "tls").exists(), "no local CA when a certificate is given"
    expected = ssl.PEM_cert_to_DER_cert(
        issued.server_cert.read_text().split("-----END")[0] + "-----END CERTIFICATE-----\n"
    )
    assert der == expected
