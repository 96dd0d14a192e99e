"""TLS bootstrap: a local certificate authority, the server certificate it signs, SSL contexts.

The server speaks TLS from the first start. With no real certificate configured, it makes a local
CA once and issues itself a short-lived server certificate from it; operators trust ``ca.pem``
(browsers, the edge agent's pinned bundle). The CA is never replaced by this module: a new CA would
silently break every client that trusted the old one, so a damaged CA is an error for a human.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldlink.kit.files import write_atomically
from fieldlink.kit.tls_client import (  # re-exported: kit.tls stays the one place to look
    TLSConfigurationError,
    client_ssl_context,
    describe_ssl_error,
)

__all__ = [
    "CA_CERT_FILENAME",
    "CA_KEY_FILENAME",
    "MOZILLA_INTERMEDIATE_TLS12_CIPHERS",
    "SERVER_CERT_FILENAME",
    "SERVER_KEY_FILENAME",
    "LocalPKI",
    "TLSConfigurationError",
    "certificate_fingerprint",
    "client_ssl_context",
    "ensure_local_pki",
    "server_ssl_context",
    "spki_sha256_base64",
]

CA_CERT_FILENAME = "ca.pem"
CA_KEY_FILENAME = "ca-key.pem"
SERVER_CERT_FILENAME = "server.pem"
SERVER_KEY_FILENAME = "server-key.pem"
_LOCK_FILENAME = ".lock"

CA_VALIDITY = timedelta(days=3650)
# 397 days is the longest validity browsers accept for a server certificate.
SERVER_VALIDITY = timedelta(days=397)
SERVER_RENEW_BEFORE = timedelta(days=30)
# Backdating absorbs small clock differences between this host and its clients; one hour keeps
# the total lifetime under the 398-day browser limit.
_BACKDATE = timedelta(hours=1)

ALWAYS_INCLUDED_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

# Mozilla "intermediate" (Server Side TLS guidelines, version 5). TLS 1.3 suites are not set here:
# OpenSSL's defaults for 1.3 are exactly Mozilla's list.
MOZILLA_INTERMEDIATE_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

_KEY_FILE_MODE = 0o600
_CERT_FILE_MODE = 0o644
_DIR_MODE = 0o700
# A common name is limited to 64 characters (RFC 5280 ub-common-name).
_CN_MAX = 64
_CA_NAME_PREFIX = "Fieldlink local CA ("
# Underscores are not valid in public DNS names, but some machines' hostnames carry them, and a
# local CA refusing to start on such a machine would help nobody.
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class LocalPKI:
    ca_cert: Path
    ca_key: Path
    server_cert: Path  # leaf followed by the CA: what a TLS server sends
    server_key: Path
    ca_fingerprint_sha256: str
    created_ca: bool
    issued_server_cert: bool


def ensure_local_pki(
    tls_dir: Path, hostnames: Sequence[str], *, now: datetime | None = None
) -> LocalPKI:
    """Create the local CA and server certificate on first use; afterwards reuse them.

    The server certificate is re-issued (same CA, fresh key) when it expires within 30 days, does
    not cover a requested hostname, is unreadable, or does not belong to the CA. An existing CA is
    never re-created.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC).replace(microsecond=0)
    # Requested names first: the first one becomes the certificate's display name.
    dns_names, ip_addresses = _split_hostnames([*hostnames, *ALWAYS_INCLUDED_HOSTNAMES])

    _prepare_directory(tls_dir)
    ca_cert_path = tls_dir / CA_CERT_FILENAME
    ca_key_path = tls_dir / CA_KEY_FILENAME
    server_cert_path = tls_dir / SERVER_CERT_FILENAME
    server_key_path = tls_dir / SERVER_KEY_FILENAME

    # Several processes may start at once (server workers, a CLI command); without the lock two
    # of them could each create a CA and the one clients trust would be overwritten.
    ca_key: _IssuerKey
    with _directory_lock(tls_dir):
        created_ca = not ca_cert_path.exists()
        if created_ca:
            ca_key, ca_cert = _create_ca(now)
            # Key first: ca.pem is what marks the CA as existing, so a crash in between leaves
            # an orphan key that the next start simply replaces.
            write_atomically(ca_key_path, _private_key_pem(ca_key), _KEY_FILE_MODE)
            write_atomically(ca_cert_path, _cert_pem(ca_cert), _CERT_FILE_MODE)
        else:
            ca_key, ca_cert = _load_ca(ca_cert_path, ca_key_path, now)

        problem = _server_cert_problem(
            server_cert_path,
            server_key_path,
            ca_cert,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            now=now,
        )
        issued_server_cert = problem is not None
        if issued_server_cert:
            server_key, server_cert = _issue_server_cert(
                ca_key, ca_cert, dns_names, ip_addresses, now
            )
            # Key first: if the certificate write is lost, the pair no longer matches and the
            # next start re-issues.
            write_atomically(server_key_path, _private_key_pem(server_key), _KEY_FILE_MODE)
            write_atomically(
                server_cert_path,
                _cert_pem(server_cert) + _cert_pem(ca_cert),
                _CERT_FILE_MODE,
            )
        else:
            _restrict_mode(server_key_path, _KEY_FILE_MODE)

    return LocalPKI(
        ca_cert=ca_cert_path,
        ca_key=ca_key_path,
        server_cert=server_cert_path,
        server_key=server_key_path,
        ca_fingerprint_sha256=_fingerprint(ca_cert),
        created_ca=created_ca,
        issued_server_cert=issued_server_cert,
    )


def certificate_fingerprint(pem_path: Path) -> str:
    """SHA-256 fingerprint of the first certificate in the file, as ``openssl x509`` prints it."""
    return _fingerprint(_load_certificates(pem_path)[0])


def spki_sha256_base64(cert_pem_path: Path) -> str:
    """Base64 SHA-256 of the first certificate's SubjectPublicKeyInfo (an HPKP-style pin)."""
    spki = (
        _load_certificates(cert_pem_path)[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with Mozilla's "intermediate" profile: TLS 1.2 and 1.3, AEAD + PFS only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(MOZILLA_INTERMEDIATE_TLS12_CIPHERS)
    # OP_NO_TICKET: OpenSSL keeps one ticket key for the life of the process, so TLS 1.2 tickets
    # would undo forward secrecy (Mozilla turns them off for the same reason).
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # Every offered suite is strong, so the client may pick (it knows whether it has AES
    # hardware); this is Mozilla's intermediate setting.
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    # OpenSSL reports most file problems as "PEM lib"; checking first gives a message that
    # names the file and what is wrong with it.
    leaf = _load_certificates(cert)[0]
    if not _same_public_key(_load_private_key(key), leaf):
        raise TLSConfigurationError(
            f"TLS private key {key} does not belong to the certificate {cert}",
            details={"cert": str(cert), "key": str(key)},
        )
    try:
        context.load_cert_chain(certfile=cert, keyfile=key, password=_refuse_encrypted_key)
    except _EncryptedKeyError:
        raise TLSConfigurationError(
            f"TLS private key {key} is encrypted; the server needs an unencrypted key file "
            "readable only by its user",
            details={"cert": str(cert), "key": str(key)},
        ) from None
    except ssl.SSLError as exc:
        raise TLSConfigurationError(
            f"cannot use TLS certificate {cert} with key {key}: {describe_ssl_error(exc)}",
            details={"cert": str(cert), "key": str(key)},
        ) from None
    except OSError as exc:
        raise TLSConfigurationError(
            f"cannot read TLS certificate {cert} or key {key}: {exc.strerror}",
            details={"cert": str(cert), "key": str(key)},
        ) from None
    return context


# --- hostnames ---------------------------------------------------------------------------------


def _split_hostnames(
    hostnames: Sequence[str],
) -> tuple[tuple[str, ...], tuple[_IPAddress, ...]]:
    """Normalised, de-duplicated DNS names and IP addresses, in first-seen order."""
    dns_names: dict[str, None] = {}
    ip_addresses: dict[_IPAddress, None] = {}
    for raw in hostnames:
        name = raw.strip()
        if not name:
            continue
        try:
            ip_addresses[ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))] = None
        except ValueError:
            dns_names[_normalise_dns_name(name)] = None
    return tuple(dns_names), tuple(ip_addresses)


def _normalise_dns_name(name: str) -> str:
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise TLSConfigurationError(f"not a valid hostname: {name!r}") from None
    labels = ascii_name.split(".")
    if labels[0] == "*" and len(labels) > 2:  # a wildcard may only stand for one left-most label
        labels = labels[1:]
    if len(ascii_name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise TLSConfigurationError(f"not a valid hostname: {name!r}")
    return ascii_name


# --- the CA ------------------------------------------------------------------------------------


def _create_ca(now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname() or "unknown host"
    host = host[: _CN_MAX - len(_CA_NAME_PREFIX) - 1]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fieldlink"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{_CA_NAME_PREFIX}{host})"),
        ]
    )
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # pathlen 0: this CA signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _load_ca(cert_path: Path, key_path: Path, now: datetime) -> tuple[_IssuerKey, x509.Certificate]:
    ca_cert = _load_certificates(cert_path)[0]
    keep_ca_hint = (
        f"the existing CA in {cert_path.parent} was kept; restore its key, or move the "
        "directory aside to create a new CA (every client must then trust the new ca.pem)"
    )
    if not key_path.exists():
        raise TLSConfigurationError(f"local CA key {key_path} is missing; {keep_ca_hint}")
    _restrict_mode(key_path, _KEY_FILE_MODE)
    ca_key = _load_private_key(key_path)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSConfigurationError(
            f"local CA key {key_path} is not an EC or RSA key; {keep_ca_hint}"
        )
    if not _same_public_key(ca_key, ca_cert):
        raise TLSConfigurationError(
            f"local CA key {key_path} does not match {cert_path}; {keep_ca_hint}"
        )
    if ca_cert.not_valid_after_utc <= now:
        raise TLSConfigurationError(
            f"local CA {cert_path} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; move "
            f"{cert_path.parent} aside to create a new CA (every client must then trust the new "
            "ca.pem)"
        )
    return ca_key, ca_cert


# --- the server certificate ---------------------------------------------------------------------


def _server_cert_problem(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[_IPAddress],
    now: datetime,
) -> str | None:
    """Why the server certificate must be (re-)issued, or None when it is fit for use."""
    try:
        leaf = _load_certificates(cert_path)[0]
        key = _load_private_key(key_path)
    except TLSConfigurationError:
        # Ours to replace: unlike the CA, nobody trusts this certificate directly.
        return "missing or unreadable"
    if not _same_public_key(key, leaf):
        return "the key does not match the certificate"
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the local CA"
    if not (leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc - SERVER_RENEW_BEFORE):
        return "expires soon or is not valid yet"
    if not _san_covers(leaf, dns_names, ip_addresses):
        return "a requested hostname is missing"
    return None


def _san_covers(
    cert: x509.Certificate, dns_names: Sequence[str], ip_addresses: Sequence[_IPAddress]
) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    covered_dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    covered_ips = set(san.get_values_for_type(x509.IPAddress))
    return set(dns_names) <= covered_dns and set(ip_addresses) <= covered_ips


def _issue_server_cert(
    ca_key: _IssuerKey,
    ca_cert: x509.Certificate,
    dns_names: Sequence[str],
    ip_addresses: Sequence[_IPAddress],
    now: datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    # Clients match the SAN only; the common name is for people reading the certificate.
    common_name = next((name for name in dns_names if len(name) <= _CN_MAX), "localhost")
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    # A leaf outliving its CA would fail verification in its last days anyway.
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fieldlink"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(name) for name in dns_names),
                    *(x509.IPAddress(address) for address in ip_addresses),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(authority_key_id, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


# --- files -------------------------------------------------------------------------------------


def _prepare_directory(tls_dir: Path) -> None:
    try:
        tls_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask, and an existing directory may be wider.
        tls_dir.chmod(_DIR_MODE)
    except OSError as exc:
        raise TLSConfigurationError(
            f"cannot prepare TLS directory {tls_dir}: {exc.strerror}"
        ) from None


@contextlib.contextmanager
def _directory_lock(tls_dir: Path) -> Iterator[None]:
    fd = os.open(tls_dir / _LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _KEY_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _restrict_mode(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o777 & ~mode:
            path.chmod(mode)


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigurationError(f"cannot read certificate {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigurationError(f"{path} holds no PEM certificate") from None


def _load_private_key(path: Path) -> PrivateKeyTypes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigurationError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigurationError(
            f"private key {path} is encrypted; an unencrypted key file readable only by its "
            "user is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message could quote the file; ours names it only.
        raise TLSConfigurationError(f"{path} holds no usable unencrypted PEM private key") from None


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_public_key(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# --- ssl errors --------------------------------------------------------------------------------


class _EncryptedKeyError(Exception):
    pass


def _refuse_encrypted_key() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a headless server.
    raise _EncryptedKeyError
