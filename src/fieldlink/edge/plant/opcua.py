"""A real OPC UA server (asyncua) exposing the plant's OPC UA instruments.

Per instrument an object ``ns=2;s=<tag>`` with one Double variable per point
(``ns=2;s=<tag>.<key>``), a ``DeviceHealth`` variable (the DI DeviceHealthEnumeration as Int32)
and the DI identification properties (Manufacturer, Model, SerialNumber, SoftwareRevision).
Value status codes follow the instrument's NE 107 state: failure → BadSensorFailure, function
check → UncertainSimulatedValue, out of specification → UncertainSensorNotAccurate.

Security: always the ``None`` policy (a laptop demo needs no keys); with a server certificate
and key also ``Basic256Sha256`` Sign and SignAndEncrypt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from fieldlink.edge.plant.catalog import NAMESPACE_URI, InstrumentSpec, health_node_id, node_id
from fieldlink.edge.plant.physics import Sample

__all__ = ["PlantOpcUaServer"]

_HEALTH_CODE: Final = {
    "ok": 0,
    "failure": 1,
    "function_check": 2,
    "out_of_specification": 3,
    "maintenance_required": 4,
}
_STATUS: Final = {
    "ok": StatusCodes.Good,
    "maintenance_required": StatusCodes.Good,
    "function_check": StatusCodes.UncertainSimulatedValue,
    "out_of_specification": StatusCodes.UncertainSensorNotAccurate,
    "failure": StatusCodes.BadSensorFailure,
}


class PlantOpcUaServer:
    def __init__(
        self,
        host: str,
        port: int,
        specs: Sequence[InstrumentSpec],
        *,
        certificate: Path | None = None,
        private_key: Path | None = None,
    ) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://{host}:{port}/fieldlink/"
        self._specs = list(specs)
        self._certificate = certificate
        self._private_key = private_key
        self._server: Server | None = None

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("Fieldlink simulated plant")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self._certificate is not None and self._private_key is not None:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
            policies += [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        server.set_security_policy(policies)
        ns = await server.register_namespace(NAMESPACE_URI)
        objects = server.nodes.objects
        for spec in self._specs:
            device = await objects.add_object(
                ua.NodeId.from_string(f"ns={ns};s={spec.tag}"), ua.QualifiedName(spec.tag, ns)
            )
            for name, value in (
                ("Manufacturer", spec.manufacturer),
                ("Model", spec.product_code),
                ("SerialNumber", spec.serial_number),
                ("SoftwareRevision", spec.firmware_version),
            ):
                await device.add_property(
                    ua.NodeId.from_string(f"ns={ns};s={spec.tag}.{name}"),
                    ua.QualifiedName(name, ns),
                    value,
                )
            for point in spec.points:
                await device.add_variable(
                    ua.NodeId.from_string(node_id(spec.tag, point.key)),
                    ua.QualifiedName(point.key, ns),
                    0.0,
                    varianttype=ua.VariantType.Double,
                )
            await device.add_variable(
                ua.NodeId.from_string(health_node_id(spec.tag)),
                ua.QualifiedName("DeviceHealth", ns),
                0,
                varianttype=ua.VariantType.Int32,
            )
        await server.start()
        self._server = server

    async def publish(self, samples: Sequence[Sample]) -> None:
        server = self._server
        if server is None:
            return
        by_tag = {sample.tag: sample for sample in samples}
        for spec in self._specs:
            sample = by_tag[spec.tag]
            status = ua.StatusCode(ua.UInt32(_STATUS[sample.health.status]))
            for point in spec.points:
                value = ua.Variant(sample.values[point.key], ua.VariantType.Double)
                await server.write_attribute_value(
                    ua.NodeId.from_string(node_id(spec.tag, point.key)),
                    ua.DataValue(value, StatusCode=status),
                )
            health = ua.Variant(_HEALTH_CODE[sample.health.status], ua.VariantType.Int32)
            await server.write_attribute_value(
                ua.NodeId.from_string(health_node_id(spec.tag)), ua.DataValue(health)
            )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
