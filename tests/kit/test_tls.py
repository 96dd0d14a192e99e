"""The TLS bootstrap: local CA, server certificate, the server's TLS policy over real sockets."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fieldlink.kit.errors import FieldlinkError
from fieldlink.kit.tls import (
    MOZILLA_INTERMEDIATE_TLS12_CIPHERS,
    LocalPKI,
    TLSConfigurationError,
    certificate_fingerprint,
    client_ssl_context,
    ensure_local_pki,
    server_ssl_context,
    spki_sha256_base64,
)

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
HANDSHAKE_TIMEOUT = 5.0


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    return tmp_path / "var" / "tls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    return ensure_local_pki(tmp_path_factory.mktemp("pki") / "tls", ["fieldlink.example"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPKI:
    """A second, unrelated local CA: what an attacker's or another machine's PKI looks like."""
    return ensure_local_pki(tmp_path_factory.mktemp("other") / "tls", ["fieldlink.example"])


# --- creation ----------------------------------------------------------------------------------


def test_first_call_creates_ca_and_server_cert_with_private_modes(tls_dir: Path) -> None:
    result = ensure_local_pki(tls_dir, ["fieldlink.example"], now=T0)

    assert result.created_ca
    assert result.issued_server_cert
    assert result.ca_cert == tls_dir / "ca.pem"
    assert result.ca_key == tls_dir / "ca-key.pem"
    assert result.server_cert == tls_dir / "server.pem"
    assert result.server_key == tls_dir / "server-key.pem"
    assert _mode(tls_dir) == 0o700
    assert _mode(result.ca_key) == 0o600
    assert _mode(result.server_key) == 0o600
    for cert in (result.ca_cert, result.server_cert):
        assert _mode(cert) & 0o022 == 0, "certificates must not be writable by others"
    assert not [p for p in tls_dir.iterdir() if p.name.endswith(".tmp")], "no temp files left"


def test_key_files_private_even_with_permissive_umask(tls_dir: Path) -> None:
    previous = os.umask(0)
    try:
        result = ensure_local_pki(tls_dir, [])
    finally:
        os.umask(previous)

    assert _mode(tls_dir) == 0o700
    assert _mode(result.ca_key) == 0o600
    assert _mode(result.server_key) == 0o600


def test_existing_world_readable_directory_and_keys_are_tightened(tls_dir: Path) -> None:
    result = ensure_local_pki(tls_dir, [])
    tls_dir.chmod(0o755)
    result.ca_key.chmod(0o644)
    result.server_key.chmod(0o644)

    ensure_local_pki(tls_dir, [])

    assert _mode(tls_dir) == 0o700
    assert _mode(result.ca_key) == 0o600
    assert _mode(result.server_key) == 0o600


def test_ca_certificate_profile(tls_dir: Path) -> None:
    result = ensure_local_pki(tls_dir, [], now=T0)
    ca = _cert(result.ca_cert)
    ca_key = serialization.load_pem_private_key(result.ca_key.read_bytes(), password=None)

    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ca_key.curve, ec.SECP256R1)
    assert ca.public_key() == ca_key.public_key()
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    (common_name,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert re.fullmatch(r"Fieldlink local CA \(.+\)", str(common_name.value))

    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert ca.not_valid_before_utc <= T0
    assert ca.not_valid_after_utc == T0 + timedelta(days=3650)


def test_server_certificate_profile(tls_dir: Path) -> None:
    result = ensure_local_pki(tls_dir, ["fieldlink.example"], now=T0)
    ca = _cert(result.ca_cert)
    chain = _chain(result.server_cert)
    leaf = chain[0]
    key = serialization.load_pem_private_key(result.server_key.read_bytes(), password=None)

    assert chain == [leaf, ca], "server.pem is the leaf followed by the CA"
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert leaf.public_key() == key.public_key()
    assert leaf.issuer == ca.subject
    assert leaf.not_valid_before_utc <= T0
    assert leaf.not_valid_after_utc == T0 + timedelta(days=397)

    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    (common_name,) = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == "fieldlink.example"


def test_san_sorts_dns_names_and_ip_addresses(tls_dir: Path) -> None:
    result = ensure_local_pki(
        tls_dir, ["fieldlink.example", "10.0.0.5", "2001:db8::1", "Plant-7.Example.", "[fd00::2]"]
    )
    san = _san(_cert(result.server_cert))

    assert set(san.get_values_for_type(x509.DNSName)) == {
        "fieldlink.example",
        "plant-7.example",
        "localhost",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("fd00::2"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_loopback_names_always_included(tls_dir: Path) -> None:
    san = _san(_cert(ensure_local_pki(tls_dir, []).server_cert))

    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


@pytest.mark.parametrize("name", ["fieldlink.example", "localhost", "127.0.0.1", "::1"])
def test_chain_verifies_under_web_pki_rules(pki: LocalPKI, name: str) -> None:
    # cryptography's verifier applies the CA/Browser Forum profile, stricter than OpenSSL's.
    leaf, *intermediates = _chain(pki.server_cert)
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([_cert(pki.ca_cert)])).build_server_verifier(subject)

    path = verifier.verify(leaf, intermediates)

    assert path[-1] == _cert(pki.ca_cert)


def test_chain_does_not_verify_for_unlisted_name(pki: LocalPKI) -> None:
    leaf = _cert(pki.server_cert)
    verifier = (
        PolicyBuilder()
        .store(Store([_cert(pki.ca_cert)]))
        .build_server_verifier(x509.DNSName("evil.example"))
    )

    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])


@pytest.mark.parametrize("name", ["bad host", "-leading.example", "a..b", "x" * 64 + ".example"])
def test_invalid_hostname_rejected_before_anything_is_written(tls_dir: Path, name: str) -> None:
    with pytest.raises(TLSConfigurationError, match="not a valid hostname"):
        ensure_local_pki(tls_dir, [name])

    assert not tls_dir.exists()


def test_naive_now_rejected(tls_dir: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ensure_local_pki(tls_dir, [], now=datetime(2026, 1, 1))


# --- reuse and renewal -------------------------------------------------------------------------


def test_second_call_reuses_ca_and_server_cert(tls_dir: Path) -> None:
    first = ensure_local_pki(tls_dir, ["fieldlink.example"], now=T0)
    files_before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}

    second = ensure_local_pki(tls_dir, ["fieldlink.example"], now=T0 + timedelta(days=1))

    assert not second.created_ca
    assert not second.issued_server_cert
    assert second.ca_fingerprint_sha256 == first.ca_fingerprint_sha256
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == files_before


@pytest.mark.parametrize(
    ("days_later", "reissued"),
    [
        (300, False),  # 97 days left
        (366, False),  # 31 days left
        (368, True),  # 29 days left: inside the renewal window
        (500, True),  # already expired
    ],
)
def test_server_cert_reissued_when_expiring_within_30_days(
    tls_dir: Path, days_later: int, reissued: bool
) -> None:
    first = ensure_local_pki(tls_dir, ["fieldlink.example"], now=T0)
    ca_before = first.ca_cert.read_bytes()
    ca_key_before = first.ca_key.read_bytes()
    later = T0 + timedelta(days=days_later)

    second = ensure_local_pki(tls_dir, ["fieldlink.example"], now=later)

    assert second.issued_server_cert is reissued
    assert not second.created_ca
    assert second.ca_fingerprint_sha256 == first.ca_fingerprint_sha256
    assert first.ca_cert.read_bytes() == ca_before
    assert first.ca_key.read_bytes() == ca_key_before
    leaf = _cert(second.server_cert)
    leaf.verify_directly_issued_by(_cert(second.ca_cert))
    if reissued:
        assert leaf.not_valid_after_utc == later + timedelta(days=397)


def test_server_cert_reissued_for_new_hostname(tls_dir: Path) -> None:
    first = ensure_local_pki(tls_dir, ["a.example"])
    old_key = first.server_key.read_bytes()

    second = ensure_local_pki(tls_dir, ["a.example", "b.example", "192.0.2.7"])

    assert second.issued_server_cert
    assert not second.created_ca
    assert second.ca_fingerprint_sha256 == first.ca_fingerprint_sha256
    san = _san(_cert(second.server_cert))
    assert {"a.example", "b.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("192.0.2.7") in san.get_values_for_type(x509.IPAddress)
    assert second.server_key.read_bytes() != old_key, "a re-issued certificate gets a fresh key"


@pytest.mark.parametrize("hostnames", [["b.example"], ["A.EXAMPLE"], ["localhost", "::1"], []])
def test_server_cert_kept_when_hostnames_already_covered(
    tls_dir: Path, hostnames: list[str]
) -> None:
    ensure_local_pki(tls_dir, ["a.example", "b.example"])

    assert not ensure_local_pki(tls_dir, hostnames).issued_server_cert


def test_concurrent_first_starts_create_one_ca(tls_dir: Path) -> None:
    # Server workers starting together must not each make a CA and overwrite one another's.
    starters = 8
    barrier = threading.Barrier(starters)
    results: list[LocalPKI] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait(timeout=HANDSHAKE_TIMEOUT)
        result = ensure_local_pki(tls_dir, ["fieldlink.example"])
        with lock:
            results.append(result)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * HANDSHAKE_TIMEOUT)

    assert len(results) == starters
    assert sum(r.created_ca for r in results) == 1
    assert sum(r.issued_server_cert for r in results) == 1
    assert {r.ca_fingerprint_sha256 for r in results} == {
        certificate_fingerprint(tls_dir / "ca.pem")
    }
    _cert(tls_dir / "server.pem").verify_directly_issued_by(_cert(tls_dir / "ca.pem"))


def test_ca_kept_when_server_files_lost(tls_dir: Path) -> None:
    first = ensure_local_pki(tls_dir, [])
    first.server_cert.unlink()
    first.server_key.unlink()

    second = ensure_local_pki(tls_dir, [])

    assert not second.created_ca
    assert second.issued_server_cert
    assert second.ca_fingerprint_sha256 == first.ca_fingerprint_sha256
    _cert(second.server_cert).verify_directly_issued_by(_cert(second.ca_cert))


def test_server_cert_reissued_when_its_key_was_lost(tls_dir: Path, other_pki: LocalPKI) -> None:
    first = ensure_local_pki(tls_dir, [])
    first.server_key.write_bytes(other_pki.server_key.read_bytes())

    second = ensure_local_pki(tls_dir, [])

    assert second.issued_server_cert
    server_ssl_context(second.server_cert, second.server_key)  # the pair matches again


def test_planted_server_certificate_from_another_ca_replaced(
    tls_dir: Path, other_pki: LocalPKI
) -> None:
    mine = ensure_local_pki(tls_dir, ["fieldlink.example"])
    mine.server_cert.write_bytes(other_pki.server_cert.read_bytes())
    mine.server_key.write_bytes(other_pki.server_key.read_bytes())

    again = ensure_local_pki(tls_dir, ["fieldlink.example"])

    assert again.issued_server_cert
    assert not again.created_ca
    _cert(again.server_cert).verify_directly_issued_by(_cert(mine.ca_cert))


def test_missing_ca_key_never_replaces_the_trusted_ca(tls_dir: Path) -> None:
    first = ensure_local_pki(tls_dir, [])
    ca_before = first.ca_cert.read_bytes()
    first.ca_key.unlink()

    with pytest.raises(TLSConfigurationError, match=r"CA key .* is missing"):
        ensure_local_pki(tls_dir, [])

    assert first.ca_cert.read_bytes() == ca_before
    assert not first.ca_key.exists()


def test_substituted_ca_key_refused(tls_dir: Path, other_pki: LocalPKI) -> None:
    first = ensure_local_pki(tls_dir, [])
    ca_before = first.ca_cert.read_bytes()
    first.ca_key.write_bytes(other_pki.ca_key.read_bytes())

    with pytest.raises(TLSConfigurationError, match="does not match"):
        ensure_local_pki(tls_dir, ["new.example"])

    assert first.ca_cert.read_bytes() == ca_before


def test_expired_ca_is_reported_not_replaced(tls_dir: Path) -> None:
    first = ensure_local_pki(tls_dir, [], now=T0)
    ca_before = first.ca_cert.read_bytes()

    with pytest.raises(TLSConfigurationError, match="expired"):
        ensure_local_pki(tls_dir, [], now=T0 + timedelta(days=3651))

    assert first.ca_cert.read_bytes() == ca_before


def test_server_cert_never_outlives_its_ca(tls_dir: Path) -> None:
    ensure_local_pki(tls_dir, [], now=T0)
    near_ca_end = T0 + timedelta(days=3650 - 100)

    result = ensure_local_pki(tls_dir, [], now=near_ca_end)

    assert result.issued_server_cert
    assert (
        _cert(result.server_cert).not_valid_after_utc == _cert(result.ca_cert).not_valid_after_utc
    )


def test_orphan_ca_key_from_interrupted_first_start_is_replaced(tls_dir: Path) -> None:
    # ca.pem was never written, so no client can trust this key yet.
    first = ensure_local_pki(tls_dir, [])
    orphan_key = first.ca_key.read_bytes()
    first.ca_cert.unlink()

    second = ensure_local_pki(tls_dir, [])

    assert second.created_ca
    assert second.ca_key.read_bytes() != orphan_key
    _cert(second.server_cert).verify_directly_issued_by(_cert(second.ca_cert))


# --- fingerprints ------------------------------------------------------------------------------


def test_certificate_fingerprint_is_openssl_style_sha256_of_der(pki: LocalPKI) -> None:
    der = ssl.PEM_cert_to_DER_cert(pki.ca_cert.read_text())
    expected = ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())

    assert certificate_fingerprint(pki.ca_cert) == expected
    assert pki.ca_fingerprint_sha256 == expected
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", expected)


def test_certificate_fingerprint_of_chain_is_the_leafs(pki: LocalPKI) -> None:
    leaf_der = _cert(pki.server_cert).public_bytes(serialization.Encoding.DER)

    assert bytes.fromhex(certificate_fingerprint(pki.server_cert).replace(":", "")) == (
        hashlib.sha256(leaf_der).digest()
    )


def test_spki_pin_is_the_server_keys_public_key(pki: LocalPKI) -> None:
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        spki_sha256_base64(pki.server_cert)
        == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    )


def test_fingerprint_of_non_certificate_raises(tmp_path: Path) -> None:
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")

    with pytest.raises(TLSConfigurationError, match="no PEM certificate"):
        certificate_fingerprint(not_pem)
    with pytest.raises(TLSConfigurationError, match="cannot read"):
        spki_sha256_base64(tmp_path / "absent.pem")


# --- the server's TLS policy, over a real loopback socket --------------------------------------


@dataclass
class Handshake:
    client_version: str | None = None
    client_cipher: str | None = None
    client_alpn: str | None = None
    client_error: OSError | None = None
    server_error: OSError | None = None
    reply: bytes = b""


def _handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    server_hostname: str = "localhost",
) -> Handshake:
    """One TLS connection on 127.0.0.1; the server echoes one message. Never hangs."""
    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(HANDSHAKE_TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(HANDSHAKE_TIMEOUT)
                    with server_context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(tls.recv(16))
            except OSError as exc:  # ssl.SSLError and timeouts are OSErrors
                result.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT) as raw,
                client_context.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                result.client_version = tls.version()
                cipher = tls.cipher()
                result.client_cipher = cipher[0] if cipher else None
                result.client_alpn = tls.selected_alpn_protocol()
                tls.sendall(b"ping")
                result.reply = tls.recv(16)
        except OSError as exc:
            result.client_error = exc
        thread.join(2 * HANDSHAKE_TIMEOUT)
        assert not thread.is_alive(), "server thread did not finish"
    return result


def _ssl_reason(error: OSError | None) -> str:
    assert isinstance(error, ssl.SSLError), f"expected a TLS error, got {error!r}"
    return str(error.reason)


@pytest.fixture(scope="module")
def server_context(pki: LocalPKI) -> ssl.SSLContext:
    return server_ssl_context(pki.server_cert, pki.server_key)


def _legacy_client(pki: LocalPKI, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=pki.ca_cert)
    # OpenSSL's default security level would stop the client from offering TLS 1.0/1.1 at all;
    # level 0 makes it really offer them, so the refusal observed is the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning, match="TLSv1"):
        context.minimum_version = version
    with pytest.warns(DeprecationWarning, match="TLSv1"):
        context.maximum_version = version
    return context


@pytest.mark.parametrize(
    ("version", "expected"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_modern_client_handshake_succeeds(
    pki: LocalPKI, server_context: ssl.SSLContext, version: ssl.TLSVersion, expected: str
) -> None:
    client = client_ssl_context(pki.ca_cert)
    client.minimum_version = version
    client.maximum_version = version
    client.set_alpn_protocols(["h2", "http/1.1"])

    result = _handshake(server_context, client)

    assert result.client_error is None
    assert result.server_error is None
    assert result.client_version == expected
    assert result.client_alpn == "http/1.1"
    assert result.reply == b"ping"
    if expected == "TLSv1.2":
        assert result.client_cipher in MOZILLA_INTERMEDIATE_TLS12_CIPHERS.split(":")
        assert str(result.client_cipher).startswith("ECDHE-ECDSA-")


def test_handshake_by_ip_address_succeeds(pki: LocalPKI, server_context: ssl.SSLContext) -> None:
    result = _handshake(
        server_context, client_ssl_context(pki.ca_cert), server_hostname="127.0.0.1"
    )

    assert result.client_error is None
    assert result.reply == b"ping"


def _assert_server_refused_protocol(result: Handshake) -> None:
    # The server's own error proves it saw the old-version hello and refused it.
    assert _ssl_reason(result.server_error) in {"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW"}
    assert _ssl_reason(result.client_error) == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert result.client_version is None


def test_tls10_downgrade_refused(pki: LocalPKI, server_context: ssl.SSLContext) -> None:
    result = _handshake(server_context, _legacy_client(pki, ssl.TLSVersion.TLSv1))

    _assert_server_refused_protocol(result)


def test_tls11_downgrade_refused(pki: LocalPKI, server_context: ssl.SSLContext) -> None:
    result = _handshake(server_context, _legacy_client(pki, ssl.TLSVersion.TLSv1_1))

    _assert_server_refused_protocol(result)


def _weak_cipher_client(pki: LocalPKI, cipher: str) -> ssl.SSLContext:
    client = client_ssl_context(pki.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has no weak suites to offer
    client.set_ciphers(cipher)
    return client


def _assert_server_refused_cipher(result: Handshake) -> None:
    assert _ssl_reason(result.server_error) == "NO_SHARED_CIPHER"
    assert _ssl_reason(result.client_error) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert result.client_version is None


@pytest.mark.parametrize(
    "cipher",
    ["AES128-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384"],  # RSA key exchange
)
def test_non_forward_secret_cipher_refused(
    pki: LocalPKI, server_context: ssl.SSLContext, cipher: str
) -> None:
    # A recorded session could be decrypted later by whoever obtains the server's key.
    _assert_server_refused_cipher(_handshake(server_context, _weak_cipher_client(pki, cipher)))


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"])
def test_cbc_mode_cipher_refused(
    pki: LocalPKI, server_context: ssl.SSLContext, cipher: str
) -> None:
    # Forward secret, but CBC with MAC-then-encrypt: the padding-oracle family (Lucky 13).
    _assert_server_refused_cipher(_handshake(server_context, _weak_cipher_client(pki, cipher)))


def test_impersonation_by_untrusted_ca_refused(
    other_pki: LocalPKI, server_context: ssl.SSLContext
) -> None:
    # The client trusts a different CA: the server we reach is not the one it knows.
    result = _handshake(server_context, client_ssl_context(other_pki.ca_cert))

    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "self-signed certificate in certificate chain" in str(result.client_error.verify_message)
    assert _ssl_reason(result.server_error) == "TLSV1_ALERT_UNKNOWN_CA"
    assert result.reply == b""


def test_hostname_mismatch_refused(pki: LocalPKI, server_context: ssl.SSLContext) -> None:
    result = _handshake(
        server_context, client_ssl_context(pki.ca_cert), server_hostname="evil.example"
    )

    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "mismatch" in str(result.client_error.verify_message).lower()
    assert result.reply == b""


def test_server_context_policy(server_context: ssl.SSLContext) -> None:
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context.maximum_version == ssl.TLSVersion.TLSv1_3
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert server_context.options & option
    assert not server_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = {c["name"] for c in server_context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12
    assert tls12 <= set(MOZILLA_INTERMEDIATE_TLS12_CIPHERS.split(":"))
    assert all(c["aead"] for c in server_context.get_ciphers())


def test_client_context_verifies_peer(pki: LocalPKI) -> None:
    client = client_ssl_context(pki.ca_cert)

    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(client.get_ca_certs()) == 1, "trusts our CA only, not the system store"


# --- configuration errors ----------------------------------------------------------------------


def _key_material_lines(key_pem: Path) -> list[str]:
    return [line for line in key_pem.read_text().splitlines() if not line.startswith("-----")]


def test_mismatched_key_refused_without_leaking_key_material(
    pki: LocalPKI, other_pki: LocalPKI
) -> None:
    with pytest.raises(TLSConfigurationError) as caught:
        server_ssl_context(pki.server_cert, other_pki.server_key)

    error = caught.value
    assert isinstance(error, FieldlinkError)
    assert error.code == "tls_configuration"
    assert error.kind == "invalid"
    assert "does not belong" in error.message
    rendered = f"{error} {error!r} {error.details}"
    for line in _key_material_lines(other_pki.server_key) + _key_material_lines(pki.server_key):
        assert line not in rendered
    assert "PRIVATE KEY" not in rendered
    assert error.__cause__ is None


def test_encrypted_key_refused_without_prompting(pki: LocalPKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse battery staple"),
        )
    )

    with pytest.raises(TLSConfigurationError, match="encrypted"):
        server_ssl_context(pki.server_cert, encrypted)


@pytest.mark.parametrize("swap", [False, True])
def test_unusable_files_refused_with_a_clear_message(
    pki: LocalPKI, tmp_path: Path, swap: bool
) -> None:
    absent = tmp_path / "absent.pem"
    cert, key = (pki.server_key, pki.server_cert) if swap else (absent, pki.server_key)
    with pytest.raises(TLSConfigurationError, match=re.escape(str(cert))):
        server_ssl_context(cert, key)


def test_client_context_requires_a_ca_bundle(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigurationError, match="cannot read"):
        client_ssl_context(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TLSConfigurationError, match="no PEM certificate"):
        client_ssl_context(junk)
