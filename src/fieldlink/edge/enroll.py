"""Enrollment: exchange a one-time code for this device's credential, and keep it safe on disk.

The code comes from an org admin (cloud UI or API); it works once and expires. The exchange is a
single HTTPS request to the cloud, verified against the configured CA bundle only (never the
system store) and the host name. The credential file holds the token alone, is created with
mode 0600 before anything is written to it, and replaces the old one atomically (write, fsync,
rename, fsync the directory: ``kit.files``), so a crash leaves the old or the new credential.

The trust anchor for signed updates: with the new credential, enrollment downloads the
repository's first root metadata (``1.root.json``) over the same CA-pinned connection, or takes
a root file the installer brought (``--root``, for an air-gapped or extra-careful install), and
pins it as ``<home>/tuf/metadata/root.json``; python-tuf walks every later root from there.
It is trusted on first use exactly as far as the credential is. It is stored after the
credential, and failing to get it does not undo the enrollment: the code is spent by then, so
the credential must be kept; the caller reports the problem and the agent reports
"no trusted root" until it is fixed. The device's id and name go to ``<home>/device.json``:
the agent needs its id to find its configuration target.
"""

from __future__ import annotations

import json
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
from fieldlink.protocol.updates import TUF_METADATA_PATH

__all__ = [
    "Enrolled",
    "EnrollmentError",
    "download_root",
    "enroll",
    "pin_root",
    "read_credential",
    "read_device_id",
    "tls_context",
    "write_credential",
    "write_device_identity",
]

MAX_RESPONSE_BYTES: Final = 16 * 1024
MAX_ROOT_BYTES: Final = 1024 * 1024
FIRST_ROOT: Final = "1.root.json"
DEVICE_FILE: Final = "device.json"
TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)


class EnrollmentError(Exception):
    """Enrollment did not happen; the message says why in words an installer can act on."""


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    device_name: str
    credential_file: Path
    trust_anchor: Path | None = None  # the pinned root, when it was stored
    trust_error: str = ""  # why it was not (the credential is stored all the same)


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


def trust_anchor_path(home: Path) -> Path:
    return home / "tuf" / "metadata" / "root.json"


def _check_root(data: bytes, where: str) -> None:
    """Enough of a look to refuse what is plainly not TUF root metadata (no tuf import here:
    the signatures are checked by python-tuf when the agent first uses it)."""
    if len(data) > MAX_ROOT_BYTES:
        raise EnrollmentError(f"{where} is larger than {MAX_ROOT_BYTES // 1024} KiB.")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnrollmentError(f"{where} is not JSON.") from exc
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if (
        not isinstance(signed, dict)
        or signed.get("_type") != "root"
        or not isinstance(doc.get("signatures"), list)
        or not isinstance(signed.get("version"), int)
        or signed["version"] < 1
    ):
        raise EnrollmentError(f"{where} is not TUF root metadata.")


def pin_root(home: Path, data: bytes, *, where: str = "the root metadata") -> Path:
    """Store ``data`` as the trusted root (mode 0644, atomically); returns its path."""
    _check_root(data, where)
    path = trust_anchor_path(home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    write_atomically(path, data, 0o644)
    return path


def download_root(
    base: str,
    *,
    ca_file: Path,
    credential: str,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """``1.root.json`` from the cloud, over the CA-pinned connection, with the credential."""
    url = base + TUF_METADATA_PATH + FIRST_ROOT
    try:
        client = httpx.Client(
            verify=tls_context(ca_file),
            timeout=TIMEOUT,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        with (
            client,
            client.stream(
                "GET",
                url,
                headers={"authorization": f"Bearer {credential}", "accept-encoding": "identity"},
            ) as response,
        ):
            data = _bounded_read(response, MAX_ROOT_BYTES, "The root metadata")
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"Could not download the root metadata: {exc}") from exc
    if response.status_code != 200:
        raise EnrollmentError(
            f"The cloud answered HTTP {response.status_code} for {FIRST_ROOT}: "
            "has it published a repository yet?"
        )
    return data


def write_device_identity(home: Path, device_id: str, device_name: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    doc = {"device_id": device_id, "device_name": device_name}
    write_atomically(home / DEVICE_FILE, json.dumps(doc).encode() + b"\n", 0o644)


def read_device_id(home: Path) -> str | None:
    try:
        doc = json.loads((home / DEVICE_FILE).read_bytes()[:MAX_RESPONSE_BYTES])
    except (OSError, ValueError):
        return None
    value = doc.get("device_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


def enroll(
    url: str,
    code: str,
    *,
    ca_file: Path,
    credential_file: Path,
    software_version: str = "",
    transport: httpx.BaseTransport | None = None,
    home: Path | None = None,
    root_file: Path | None = None,
) -> Enrolled:
    """Exchange ``code`` for the credential and store it; the code is spent either way.

    With ``home``: then pin the trust anchor (``root_file`` if given, else downloaded) and
    record the device's identity there; see the module docstring for what a failure means.
    """
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
            payload = _bounded_read(response, MAX_RESPONSE_BYTES, "The cloud's answer")
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"Could not reach the cloud at {base}: {exc}") from exc
    if response.status_code != 200:
        raise EnrollmentError(_refusal(response.status_code, payload))
    try:
        issued = msgspec.json.decode(payload, type=CredentialIssued)
    except msgspec.DecodeError as exc:
        raise EnrollmentError("The cloud's answer was not understood.") from exc
    write_credential(credential_file, issued.credential)
    if home is None:
        return Enrolled(issued.device_id, issued.device_name, credential_file)
    try:
        write_device_identity(home, issued.device_id, issued.device_name)
        if root_file is not None:
            try:
                data = root_file.read_bytes()[: MAX_ROOT_BYTES + 1]
            except OSError as exc:
                raise EnrollmentError(f"Cannot read {root_file}: {exc.strerror}.") from exc
            anchor = pin_root(home, data, where=str(root_file))
        else:
            data = download_root(
                base, ca_file=ca_file, credential=issued.credential, transport=transport
            )
            anchor = pin_root(home, data, where=f"the cloud's {FIRST_ROOT}")
    except (EnrollmentError, OSError) as exc:
        return Enrolled(issued.device_id, issued.device_name, credential_file, trust_error=str(exc))
    return Enrolled(issued.device_id, issued.device_name, credential_file, trust_anchor=anchor)


def _bounded_read(response: httpx.Response, limit: int, what: str) -> bytes:
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > limit:
            raise EnrollmentError(f"{what} is too large.")
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
