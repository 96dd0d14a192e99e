"""Enrollment: exchange a one-time code for this device's credential, and keep it safe on disk.

The code comes from an org admin (cloud UI or API); it works once and expires. The exchange is a
single HTTPS request to the cloud, verified against the configured CA bundle only (never the
system store) and the host name. The credential file holds the token alone, is created with
mode 0600 before anything is written to it, and replaces the old one atomically (write, fsync,
rename, fsync the directory: ``kit.files``), so a crash leaves the old or the new credential.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
import msgspec

from fieldlink.kit.files import write_atomically
from fieldlink.kit.tls_client import TLSConfigurationError, client_ssl_context
from fieldlink.protocol.edge import ENROLL_PATH, CredentialIssued, EnrollRequest

__all__ = [
    "Enrolled",
    "EnrollmentError",
    "enroll",
    "read_credential",
    "tls_context",
    "write_credential",
]

MAX_RESPONSE_BYTES: Final = 16 * 1024
TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)


class EnrollmentError(Exception):
    """Enrollment did not happen; the message says why in words an installer can act on."""


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    device_name: str
    credential_file: Path


def check_https(url: str) -> str:
    """``url`` without a trailing slash, or EnrollmentError unless it is https://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrollmentError(f"The cloud URL must start with https:// (got {url!r}).")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise EnrollmentError("The cloud URL must be https://host[:port] with nothing else.")
    return url.rstrip("/")


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """Trust exactly ``ca_file`` (not the system store), check the host name, TLS 1.2 or newer."""
    try:
        return client_ssl_context(ca_file)
    except TLSConfigurationError as exc:
        raise EnrollmentError(exc.message) from exc


def write_credential(path: Path, credential: str) -> None:
    """Store the credential with mode 0600, atomically replacing any previous one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, credential.encode() + b"\n", 0o600)


def read_credential(path: Path) -> str:
    """The stored credential; refuses a file others may read (it would no longer be secret)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError as exc:
        raise EnrollmentError(
            f"No credential at {path}: run `fieldlink edge enroll` first."
        ) from exc
    if mode & 0o077:
        raise EnrollmentError(
            f"{path} is readable by others (mode {mode:o}); it must be 0600. "
            f"Fix it with: chmod 600 {path}"
        )
    token = path.read_text().strip()
    if not token.startswith("fld_"):
        raise EnrollmentError(f"{path} does not hold a device credential.")
    return token


def enroll(
    url: str,
    code: str,
    *,
    ca_file: Path,
    credential_file: Path,
    software_version: str = "",
    transport: httpx.BaseTransport | None = None,
) -> Enrolled:
    """Exchange ``code`` for the credential and store it; the code is spent either way."""
    base = check_https(url)
    code = code.strip()
    if not code.startswith("fle_"):
        raise EnrollmentError("An enrollment code starts with fle_; copy it from the cloud.")
    body = msgspec.json.encode(EnrollRequest(code=code, software_version=software_version))
    try:
        client = httpx.Client(
            verify=tls_context(ca_file),
            timeout=TIMEOUT,
            follow_redirects=False,
            trust_env=False,  # no proxy or CA from the environment: only what was configured
            transport=transport,
        )
        with (
            client,
            client.stream(
                "POST",
                base + ENROLL_PATH,
                content=body,
                headers={"content-type": "application/json"},
            ) as response,
        ):
            payload = _bounded_read(response)
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"Could not reach the cloud at {base}: {exc}") from exc
    if response.status_code != 200:
        raise EnrollmentError(_refusal(response.status_code, payload))
    try:
        issued = msgspec.json.decode(payload, type=CredentialIssued)
    except msgspec.DecodeError as exc:
        raise EnrollmentError("The cloud's answer was not understood.") from exc
    write_credential(credential_file, issued.credential)
    return Enrolled(issued.device_id, issued.device_name, credential_file)


def _bounded_read(response: httpx.Response) -> bytes:
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise EnrollmentError("The cloud's answer is too large.")
    return data


def _refusal(status: int, payload: bytes) -> str:
    try:
        error = msgspec.json.decode(payload, type=dict[str, object])
        message = str(error.get("message", ""))[:300]
    except msgspec.DecodeError:
        message = ""
    if status == 401:
        return f"The enrollment code was refused: {message or 'not valid or expired'}."
    return f"Enrollment failed with HTTP {status}: {message or 'no details'}."
