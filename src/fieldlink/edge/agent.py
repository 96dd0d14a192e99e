"""The running agent: field drivers → durable buffer → outbound HTTPS uplink, on one event loop.

- The poller reads every source on its interval and appends each cycle to the buffer (one
  durable commit per cycle) before anything is sent.
- The uplink drains the buffer over HTTPS in two lanes (live and backlog) and deletes only what
  the cloud acknowledged; its ``Retry-After``, backoff and refusal rules are in ``uplink``.
- Discovery: at start (and until it succeeds) the agent announces the instruments it reads, so
  the cloud creates their assets and points in the device's organisation.
- Rotation: when an acknowledgement asks for it, the agent fetches its next credential, stores
  it (0600, atomic) and switches to it; the cloud keeps the old one valid until the new one is
  used, so nothing is lost whichever step a crash interrupts.
- Nothing listens: every exchange is a request the agent makes (a test checks the process's
  sockets with psutil). Logs are written on state changes only.

The control requests (announce, rotate) go through their own small client, verified against the
same CA bundle; the uplink's client carries only telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec

from fieldlink.edge.buffer import Buffer
from fieldlink.edge.config import EdgeConfig
from fieldlink.edge.drivers import make_driver
from fieldlink.edge.drivers.base import Driver
from fieldlink.edge.enroll import read_credential, tls_context, write_credential
from fieldlink.edge.model import HealthReading, Reading
from fieldlink.edge.poller import Poller
from fieldlink.edge.uplink import Uplink
from fieldlink.kit.logging import get_logger
from fieldlink.protocol.edge import ANNOUNCE_PATH, ROTATE_PATH, Announce, CredentialIssued
from fieldlink.protocol.telemetry import Ack

__all__ = ["Agent"]

log = get_logger(__name__)

MAX_CONTROL_RESPONSE: Final = 64 * 1024
ANNOUNCE_RETRY_CAP_S: Final = 300.0


class ControlError(Exception):
    """A control request (announce, rotate) did not succeed; ``status`` if the cloud answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Agent:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        software_version: str = "",
        base_dir: Path | None = None,
        driver_factory: Callable[..., Driver] = make_driver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = base_dir or Path.cwd()
        self.config = config
        self.software_version = software_version
        self.credential_file = base / config.cloud.credential_file
        self.ca_file = base / config.cloud.ca
        self.url = config.cloud.url.rstrip("/")
        self.buffer = Buffer(
            base / config.buffer.path, max_bytes=config.buffer.max_mb * 1024 * 1024
        )
        try:
            self.uplink = Uplink(
                self.url,
                ca_file=self.ca_file,
                credential_file=self.credential_file,
                buffer=self.buffer,
                software_version=software_version,
                transport=transport,
                on_ack=self._on_ack,
            )
        except BaseException:
            self.buffer.close()  # a refused credential or CA: leave the buffer file cleanly
            raise
        self.poller = Poller(config.sources, self._on_readings, driver_factory=driver_factory)
        self._control = httpx.AsyncClient(
            verify=tls_context(self.ca_file),
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self._rotation: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.announced = asyncio.Event()

    # -- wiring ----------------------------------------------------------------------------------

    def _on_readings(self, readings: list[Reading], health: list[HealthReading]) -> None:
        # Synchronous on purpose: the cycle is on disk (fsynced) before the poller moves on.
        self.buffer.append(readings, health)

    def _on_ack(self, ack: Ack) -> None:
        if ack.rotate_credential and (self._rotation is None or self._rotation.done()):
            self._rotation = asyncio.get_running_loop().create_task(self._rotate())

    # -- control requests ------------------------------------------------------------------------

    async def _post(self, path: str, body: bytes) -> bytes:
        token = read_credential(self.credential_file)
        try:
            async with self._control.stream(
                "POST",
                self.url + path,
                content=body,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            ) as response:
                data = b""
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_CONTROL_RESPONSE:
                        raise ControlError(f"{path}: the answer is too large")
        except httpx.HTTPError as exc:
            raise ControlError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ControlError(
                f"{path}: HTTP {response.status_code} {data[:300]!r}", response.status_code
            )
        return data

    async def announce(self) -> None:
        """Tell the cloud what this agent reads, retrying with backoff until it is answered.

        Sending waits for this (``announced``): values of points the cloud does not know yet
        would be refused and quarantined. If the cloud refuses the announcement itself (a 4xx:
        e.g. a unit it does not know), that is logged and sending starts anyway, for the points
        an admin created by hand. Failures are logged once, with their cause; retries are quiet.
        """
        message = Announce(instruments=[i.announce() for i in self.poller.describe()])
        body = msgspec.json.encode(message)
        delay = 2.0
        logged = False
        while not self._stopping.is_set():
            try:
                await self._post(ANNOUNCE_PATH, body)
            except ControlError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    log.warning("announce_refused", error=str(exc))
                    self.announced.set()
                    return
                if not logged:
                    log.warning("announce_failed", error=str(exc))
                    logged = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1))  # noqa: S311
                delay = min(delay * 2, ANNOUNCE_RETRY_CAP_S)
                continue
            log.info("announced", instruments=len(message.instruments))
            self.announced.set()
            return

    async def _send_after_announce(self) -> None:
        announced = asyncio.create_task(self.announced.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([announced, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (announced, stopping):
            task.cancel()
        if not self._stopping.is_set():
            await self.uplink.run()

    async def _rotate(self) -> None:
        try:
            data = await self._post(ROTATE_PATH, b"")
            issued = msgspec.json.decode(data, type=CredentialIssued)
        except (ControlError, msgspec.DecodeError) as exc:
            # The cloud asks again with the next acknowledgement; the old credential still works.
            log.warning("credential_rotation_failed", error=str(exc))
            return
        write_credential(self.credential_file, issued.credential)
        self.uplink.swap_credential(issued.credential)
        log.info("credential_rotated", device=issued.device_id)

    # -- running ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.poller.stop()
        self.uplink.stop()

    async def run(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT when installed by ``main``).

        If the poller or the uplink ends on an unexpected error, the agent stops (and its
        supervisor restarts it): nothing is lost, the buffer is on disk.
        """
        log.info("agent_started", sources=len(self.config.sources), version=self.software_version)
        workers = [
            asyncio.create_task(self.poller.run(), name="poller"),
            asyncio.create_task(self._send_after_announce(), name="uplink"),
        ]
        announcing = asyncio.create_task(self.announce(), name="announce")
        stopping = asyncio.create_task(self._stopping.wait(), name="stopping")
        failure: BaseException | None = None
        try:
            waiting: set[asyncio.Task[Any]] = {*workers, stopping}
            # A poller with no sources ends at once and that is fine: the uplink still drains.
            while stopping in waiting and failure is None:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopping and task.exception() is not None:
                        failure = task.exception()
                        log.error("agent_component_failed", component=task.get_name())
        finally:
            self.stop()
            pending = [*workers, announcing, stopping]
            _, late = await asyncio.wait(pending, timeout=15)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._rotation is not None:
                await asyncio.gather(self._rotation, return_exceptions=True)
            await self.uplink.aclose()
            await self._control.aclose()
            self.buffer.close()
            log.info("agent_stopped")
        if failure is not None:
            raise failure


async def main(config: EdgeConfig, *, software_version: str, base_dir: Path) -> None:
    # httpx logs every request at INFO: one line per batch. The agent logs transitions only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    agent = Agent(config, software_version=software_version, base_dir=base_dir)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    await agent.run()
