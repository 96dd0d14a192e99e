"""OPC UA: every configured node (values and health) in one Read service call per cycle.

Imported only when a source of kind ``opcua`` is configured (``drivers.make_driver``): asyncua is
large and most agents never need it.

Security: ``None``, or ``Basic256Sha256`` with ``Sign`` / ``SignAndEncrypt`` using this client's
certificate and private key (the key file must not be readable by group or others). With
``server_certificate`` the server is pinned to that certificate; without it, the certificate
the server offers in its endpoint list is taken (trust on each connect).

StatusCode → quality by its severity bits: Good → 192, Uncertain → 64, Bad → 0 (value 0.0).
Health nodes hold the OPC UA DI ``DeviceHealthEnumeration`` (0 normal, 1 failure,
2 check function, 3 off spec, 4 maintenance required), the same order as NE 107.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError
from cryptography import x509

from fieldlink.edge.config import ConfigError, OpcUaSource
from fieldlink.edge.drivers.base import DriverError, sendable
from fieldlink.edge.model import (
    HEALTH_BY_CODE,
    HealthReading,
    InstrumentInfo,
    PointInfo,
    Reading,
    now_ms,
)
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD, QUALITY_UNCERTAIN

__all__ = ["OpcUaDriver", "quality_of"]

# Servers advertise MaxNodesPerRead; 1000 is below every limit we have met, so a normal source
# is one request and a very large one a few.
MAX_NODES_PER_READ: Final = 1000

_MODES: Final = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


def quality_of(status: ua.StatusCode) -> int:
    severity = status.value >> 30
    if severity == 0:
        return QUALITY_GOOD
    if severity == 1:
        return QUALITY_UNCERTAIN
    return QUALITY_BAD


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        return number if sendable(number) else None
    return None


def _node_id(text: str, where: str) -> ua.NodeId:
    try:
        return ua.NodeId.from_string(text)
    except (ValueError, UaError) as exc:
        raise ConfigError(f"{where}: {text!r} is not an OPC UA node id ({exc})") from exc


class _Credentials(NamedTuple):
    certificate: uacrypto.CertProperties
    private_key: uacrypto.CertProperties
    server_certificate: uacrypto.CertProperties | None
    application_uri: str | None


def _file(path: Path) -> uacrypto.CertProperties:
    # asyncua guesses PEM or DER from the file name; the content says it for sure.
    content = path.read_bytes()
    pem = content.lstrip().startswith(b"-----BEGIN")
    return uacrypto.CertProperties(content, extension="pem" if pem else "der")


def _credentials(source: OpcUaSource) -> _Credentials:
    """This client's certificate and key (the key must be private) and the pinned server's.

    asyncua checks that the client's application URI is the one in its certificate; taking it
    from the certificate means one less setting to get wrong.
    """
    assert source.certificate is not None  # noqa: S101 - the config refuses it otherwise
    assert source.private_key is not None  # noqa: S101
    key_path = Path(source.private_key)
    try:
        if key_path.stat().st_mode & 0o077:
            raise DriverError(f"{key_path} is readable by others: chmod 600 it")
        certificate, private_key = _file(Path(source.certificate)), _file(key_path)
        server = _file(Path(source.server_certificate)) if source.server_certificate else None
        content = certificate.path_or_content
        assert isinstance(content, bytes)  # noqa: S101 - _file reads the content
        if certificate.extension == "pem":
            cert = x509.load_pem_x509_certificate(content)
        else:
            cert = x509.load_der_x509_certificate(content)
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot use the OPC UA certificates: {exc}") from exc
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return _Credentials(certificate, private_key, server, uris[0] if uris else None)


class OpcUaDriver:
    def __init__(self, source: OpcUaSource, *, clock: Callable[[], int] = now_ms) -> None:
        self.name = source.name
        self._source = source
        self._clock = clock
        self._client: Client | None = None
        # asyncua warns on every failed connect and on tearing down a dead connection; the
        # poller reports an outage once.
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        # (tag, key or None for health, node id) in the order of the one read request.
        self._slots: list[tuple[str, str | None, ua.NodeId]] = []
        prefix = f"sources[{source.name}]"
        for instrument in source.instruments:
            for point in instrument.points:
                where = f"{prefix}.{instrument.tag}.{point.key}.node_id"
                self._slots.append((instrument.tag, point.key, _node_id(point.node_id, where)))
            if instrument.health_node is not None:
                where = f"{prefix}.{instrument.tag}.health_node"
                self._slots.append((instrument.tag, None, _node_id(instrument.health_node, where)))
        self._nodes: list[Node] = []

    def describe(self) -> list[InstrumentInfo]:
        return [
            InstrumentInfo(
                i.tag,
                i.manufacturer,
                i.product_code,
                i.serial_number,
                i.firmware_version,
                tuple(PointInfo(p.key, p.unit, p.description) for p in i.points),
            )
            for i in self._source.instruments
        ]

    async def _secure(self, client: Client) -> None:
        source = self._source
        if source.security_mode == "None":
            return
        credentials = _credentials(source)
        if credentials.application_uri:
            client.application_uri = credentials.application_uri
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=credentials.certificate,
            private_key=credentials.private_key,
            server_certificate=credentials.server_certificate,
            mode=_MODES[source.security_mode],
        )

    async def connect(self) -> None:
        await self.close()
        client = Client(self._source.endpoint, timeout=self._source.timeout_ms / 1000)
        client.name = client.description = "Fieldlink edge agent"
        # Servers cap sessions (asyncua at 10 min) and asyncua warns when the request is cut;
        # the session must outlive a poll interval, or every read would find it expired.
        client.session_timeout = max(600_000, 4 * self._source.poll_ms)
        try:
            await self._secure(client)
            await client.connect()
        except DriverError:
            client.disconnect_socket()
            raise
        except (TimeoutError, OSError, UaError, ValueError) as exc:
            # A failed connect has already torn down what it built; the socket is all.
            client.disconnect_socket()
            raise DriverError(f"cannot connect to {self._source.endpoint}: {exc!r}") from exc
        self._client = client
        self._nodes = [client.get_node(node_id) for _, _, node_id in self._slots]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)

    async def _read_all(self, client: Client) -> list[ua.DataValue]:
        values: list[ua.DataValue] = []
        for at in range(0, len(self._nodes), MAX_NODES_PER_READ):
            chunk = self._nodes[at : at + MAX_NODES_PER_READ]
            values.extend(await client.read_attributes(chunk, AttributeIds.Value))
        return values

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        client = self._client
        if client is None:
            raise DriverError("not connected")
        ts = self._clock()
        try:
            values = await self._read_all(client)
        except (TimeoutError, OSError, UaError, ConnectionError) as exc:
            raise DriverError(f"read from {self._source.endpoint} failed: {exc!r}") from exc
        if len(values) != len(self._slots):
            raise DriverError("the server answered a different number of values")
        return _results(self._slots, values, ts)


def _results(
    slots: Sequence[tuple[str, str | None, ua.NodeId]], values: Sequence[ua.DataValue], ts: int
) -> tuple[list[Reading], list[HealthReading]]:
    readings: list[Reading] = []
    health: list[HealthReading] = []
    for (tag, key, _), data in zip(slots, values, strict=True):
        quality = quality_of(data.StatusCode) if data.StatusCode is not None else QUALITY_GOOD
        number = _number(data.Value.Value) if data.Value is not None else None
        if key is None:
            if (
                quality != QUALITY_BAD
                and number is not None
                and number.is_integer()
                and 0 <= number < len(HEALTH_BY_CODE)
            ):
                health.append(HealthReading(tag, HEALTH_BY_CODE[int(number)], ts))
            continue
        if number is None or quality == QUALITY_BAD:
            readings.append(Reading(f"{tag}/{key}", ts, 0.0, QUALITY_BAD))
        else:
            readings.append(Reading(f"{tag}/{key}", ts, number, quality))
    return readings, health


async def _quiet_disconnect(client: Client) -> None:
    # Tearing down a connection that is already gone raises in several layers; the poller has
    # reported the failure once already, so the teardown stays silent.
    try:
        await asyncio.wait_for(client.disconnect(), timeout=2)
    except Exception:  # noqa: BLE001 - any teardown failure leaves us disconnected, as wanted
        client.disconnect_socket()
