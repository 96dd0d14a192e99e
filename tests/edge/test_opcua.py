"""The OPC UA driver against a real asyncua server on 127.0.0.1: one Read per cycle, status codes
to quality, health enumeration, outages, and a signed (Basic256Sha256 Sign) session."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fieldlink.edge.config import OpcUaInstrument, OpcUaPoint, OpcUaSource, parse_config
from fieldlink.edge.drivers import make_driver
from fieldlink.edge.drivers.base import DriverError
from fieldlink.edge.drivers.opcua import OpcUaDriver
from fieldlink.edge.model import HealthReading
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD, QUALITY_UNCERTAIN
from tests.edge.test_modbus import sync

TS = 1_700_000_000_000

# name → (variant type, value, status code)
NODES: dict[str, tuple[ua.VariantType, Any, int]] = {
    "good": (ua.VariantType.Double, 21.5, ua.StatusCodes.Good),
    "uncertain": (ua.VariantType.Float, 1.5, ua.StatusCodes.UncertainSensorNotAccurate),
    "bad": (ua.VariantType.Double, 99.0, ua.StatusCodes.BadSensorFailure),
    "integer": (ua.VariantType.Int32, -7, ua.StatusCodes.Good),
    "switch": (ua.VariantType.Boolean, True, ua.StatusCodes.Good),
    "text": (ua.VariantType.String, "twelve", ua.StatusCodes.Good),
    "nan": (ua.VariantType.Double, float("nan"), ua.StatusCodes.Good),
    "DeviceHealth": (ua.VariantType.Int32, 2, ua.StatusCodes.Good),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def opcua_server(
    port: int, *, certificate: Path | None = None, key: Path | None = None
) -> AsyncIterator[Server]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/test/")
    policies = [ua.SecurityPolicyType.NoSecurity]
    if certificate is not None and key is not None:
        await server.load_certificate(str(certificate))
        await server.load_private_key(str(key))
        policies = [ua.SecurityPolicyType.Basic256Sha256_Sign]
    server.set_security_policy(policies)
    ns = await server.register_namespace("urn:test")
    device = await server.nodes.objects.add_object(ns, "DEV")
    for name, (variant, value, status) in NODES.items():
        node = await device.add_variable(
            ua.NodeId.from_string(f"ns={ns};s=DEV.{name}"), name, value, varianttype=variant
        )
        await server.write_attribute_value(
            node.nodeid,
            ua.DataValue(ua.Variant(value, variant), StatusCode=ua.StatusCode(ua.UInt32(status))),
        )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def opcua_source(port: int, keys: list[str], **kw: Any) -> OpcUaSource:
    points = [OpcUaPoint(key=k, unit="1", node_id=f"ns=2;s=DEV.{k}") for k in keys]
    instrument = OpcUaInstrument(tag="DEV", points=points, health_node="ns=2;s=DEV.DeviceHealth")
    return OpcUaSource(
        name="panel",
        endpoint=f"opc.tcp://127.0.0.1:{port}/test/",
        instruments=[instrument],
        timeout_ms=2000,
        **kw,
    )


@pytest.fixture
def read_requests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many nodes each Read service call the server answered asked for."""
    calls: list[int] = []
    original: Callable[[InternalSession, ua.ReadParameters], Awaitable[Any]] = InternalSession.read

    async def counting(self: InternalSession, params: ua.ReadParameters) -> Any:
        calls.append(len(params.NodesToRead))
        return await original(self, params)

    monkeypatch.setattr(InternalSession, "read", counting)
    return calls


def test_opcua_driver_is_built_lazily_by_the_factory() -> None:
    config = parse_config(
        '[cloud]\nurl = "https://x.example"\nca = "c"\ncredential_file = "f"\n'
        '[[sources]]\nname = "p"\nkind = "opcua"\nendpoint = "opc.tcp://127.0.0.1:4840/"\n'
        '[[sources.instruments]]\ntag = "T"\n'
        '[[sources.instruments.points]]\nkey = "t"\nunit = "Cel"\nnode_id = "ns=2;s=T.t"\n'
    )
    assert isinstance(make_driver(config.sources[0]), OpcUaDriver)


def test_a_malformed_node_id_is_refused_when_the_driver_is_built() -> None:
    from fieldlink.edge.config import ConfigError  # noqa: PLC0415

    bad = OpcUaSource(
        name="p",
        endpoint="opc.tcp://127.0.0.1:1/",
        instruments=[
            OpcUaInstrument(tag="T", points=[OpcUaPoint(key="t", unit="1", node_id="ns=x;q")])
        ],
    )
    with pytest.raises(ConfigError, match="not an OPC UA node id"):
        OpcUaDriver(bad)


@sync
async def test_one_read_request_per_cycle_and_status_codes_become_quality(
    read_requests: list[int],
) -> None:
    port = free_port()
    keys = [k for k in NODES if k != "DeviceHealth"]
    async with opcua_server(port):
        driver = OpcUaDriver(opcua_source(port, keys), clock=lambda: TS)
        await driver.connect()
        try:
            read_requests.clear()
            readings, health = await driver.read()
            assert read_requests == [len(keys) + 1]  # every point and the health node, at once
            await driver.read()
            assert read_requests == [len(keys) + 1] * 2
        finally:
            await driver.close()
    got = {r.point.removeprefix("DEV/"): (r.value, r.quality) for r in readings}
    assert got == {
        "good": (21.5, QUALITY_GOOD),
        "uncertain": (1.5, QUALITY_UNCERTAIN),
        "bad": (0.0, QUALITY_BAD),
        "integer": (-7.0, QUALITY_GOOD),
        "switch": (1.0, QUALITY_GOOD),
        "text": (0.0, QUALITY_BAD),
        "nan": (0.0, QUALITY_BAD),
    }
    assert health == [HealthReading("DEV", "function_check", TS)]


@sync
async def test_server_gone_raises_driver_error_and_reconnect_works() -> None:
    port = free_port()
    driver = OpcUaDriver(opcua_source(port, ["good"]))
    async with opcua_server(port):
        await driver.connect()
        assert (await driver.read())[0][0].value == 21.5
    with pytest.raises(DriverError):
        await driver.read()
    await driver.close()
    with pytest.raises(DriverError, match="cannot connect"):
        await driver.connect()
    async with opcua_server(port):
        await driver.connect()
        assert (await driver.read())[0][0].value == 21.5
        await driver.close()


def _certificate(directory: Path, name: str, uri: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_signed_session_with_a_pinned_server_certificate(tmp_path: Path) -> None:
    server_cert, server_key = _certificate(tmp_path, "server", "urn:freeopcua:python:server")
    client_cert, client_key = _certificate(tmp_path, "client", "urn:fieldlink:edge:test")
    # The agent reads a key whatever its file name says (asyncua alone would go by ".pem").
    client_key = client_key.rename(tmp_path / "client.key")
    port = free_port()

    async def go() -> None:
        async with opcua_server(port, certificate=server_cert, key=server_key):
            config = opcua_source(
                port,
                ["good"],
                security_mode="Sign",
                certificate=str(client_cert),
                private_key=str(client_key),
                server_certificate=str(server_cert),
            )
            driver = OpcUaDriver(config)
            await driver.connect()
            try:
                assert (await driver.read())[0][0].value == 21.5
            finally:
                await driver.close()
            # Without security the same server (Sign only) refuses the session.
            with pytest.raises(DriverError):
                await OpcUaDriver(opcua_source(port, ["good"])).connect()
            client_key.chmod(0o644)
            with pytest.raises(DriverError, match="readable by others"):
                await OpcUaDriver(config).connect()

    asyncio.run(asyncio.wait_for(go(), timeout=60))
