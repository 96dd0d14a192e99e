"""Client-side TLS: a context that trusts exactly one configured CA bundle.

Apart from ``kit.tls`` (the local CA and server certificates) so that a TLS client — the edge
agent above all — does not load ``cryptography``: 16 MB of its memory, for nothing it uses.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from fieldlink.kit.errors import FieldlinkError

__all__ = ["TLSConfigurationError", "client_ssl_context", "describe_ssl_error"]


class TLSConfigurationError(FieldlinkError):
    """Certificates or keys that cannot be used. Messages name files, never key material."""

    code = "tls_configuration"
    kind = "invalid"


def client_ssl_context(ca_bundle: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca_bundle``, verifies the hostname, TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    # RFC 5280 strict checks (Python 3.13+ default); our certificates are made to pass them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _check_bundle(ca_bundle)  # a clear error for a missing or empty bundle
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except ssl.SSLError as exc:
        raise TLSConfigurationError(
            f"CA bundle {ca_bundle} holds no usable certificate: {describe_ssl_error(exc)}",
            details={"ca_bundle": str(ca_bundle)},
        ) from None
    except OSError as exc:
        raise TLSConfigurationError(
            f"cannot read CA bundle {ca_bundle}: {exc.strerror}",
            details={"ca_bundle": str(ca_bundle)},
        ) from None
    return context


def _check_bundle(path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigurationError(f"cannot read certificate {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigurationError(f"{path} holds no PEM certificate")


_SSL_REASONS = {
    "KEY_VALUES_MISMATCH": "the private key does not belong to the certificate",
    "NO_START_LINE": "a file is not in PEM format or holds the wrong kind of object",
    "EE_KEY_TOO_SMALL": "the certificate's key is too small for the security level",
    "CA_MD_TOO_WEAK": "the certificate's signature algorithm is too weak",
}


def describe_ssl_error(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    return _SSL_REASONS.get(reason, reason.replace("_", " ").lower() or "unreadable")
