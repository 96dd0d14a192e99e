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

Signed configuration and software (``edge.updater`` verifies, this module decides):

- Every acknowledgement (and every report answer) says which configuration version and which
  software version the cloud wants. When that differs from what runs, one check at a time
  fetches the signed target in a worker thread. A periodic check (``[update]
  check_interval_s``, jittered) refreshes the metadata even without a signal, so expired or
  rolled-back metadata is noticed and reported.
- A configuration is applied only after TUF verified it and ``device_config`` accepted it (for
  this device, every edge.toml rule, a version that does not go back): the new source list is
  announced, the poller is replaced, and the target's bytes are kept as
  ``<home>/config/applied.json``, which overrides edge.toml's sources at the next start. The
  buffer is never touched. A configuration that fails is reported and not applied: the old one
  keeps running.
- Software is installed into a new slot (``slots.install_bundle``), staged, reported as
  "restarting", and the agent exits with ``EXIT_RESTART_FOR_UPDATE`` (75) for the supervisor
  to switch. Only under the supervisor (it sets ``FIELDLINK_EDGE_HOME``): a plain restart
  would stage the same version forever. A version the supervisor rolled back is not tried
  again until the cloud offers another.
- The first acknowledged exchange marks this version healthy (``slots.mark_healthy``): that is
  what the supervisor waits for before it keeps a new version.
- ``DeviceReport`` goes to the cloud at start (with the supervisor's last outcome) and whenever
  a check, an apply or an install changes what there is to say: not with every batch.

Start needs neither the network nor ``tuf``: checks run later, in a thread.

The control requests (announce, rotate, report) go through their own small client, verified
against the same CA bundle; the uplink's client carries only telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec

from fieldlink.edge import slots
from fieldlink.edge.buffer import Buffer
from fieldlink.edge.config import ConfigError, EdgeConfig, Source
from fieldlink.edge.device_config import DesiredConfig, load_config_target
from fieldlink.edge.drivers import make_driver
from fieldlink.edge.drivers.base import Driver
from fieldlink.edge.enroll import (
    read_credential,
    read_device_id,
    tls_context,
    write_credential,
    write_device_identity,
)
from fieldlink.edge.model import HealthReading, Reading, now_ms
from fieldlink.edge.poller import Poller
from fieldlink.edge.updater import EdgeUpdater, UpdateCheckError
from fieldlink.edge.uplink import Uplink
from fieldlink.kit.files import write_atomically
from fieldlink.kit.logging import get_logger
from fieldlink.protocol.edge import ANNOUNCE_PATH, ROTATE_PATH, Announce, CredentialIssued
from fieldlink.protocol.telemetry import Ack
from fieldlink.protocol.updates import REPORT_PATH, DeviceReport, ReportAck

__all__ = ["Agent", "edge_home"]

log = get_logger(__name__)

MAX_CONTROL_RESPONSE: Final = 64 * 1024
ANNOUNCE_RETRY_CAP_S: Final = 300.0
REPORT_RETRY_CAP_S: Final = 300.0
APPLIED_CONFIG: Final = Path("config") / "applied.json"
# The first periodic check comes within this long after start (jittered), later ones every
# check_interval_s ±20 %.
FIRST_CHECK_MAX_S: Final = 600.0
CHECK_JITTER: Final = 0.2
# What a refused software target means: someone served what must not be installed.
_REFUSALS: Final = frozenset(
    {"bad_signature", "rollback", "bad_target", "downgrade_refused", "too_large"}
)

# (verified bundle, home, version) -> the installed slot; slots.install_bundle in production
BundleInstaller = Callable[[Path, Path, str], Path]


class ControlError(Exception):
    """A control request (announce, rotate) did not succeed; ``status`` if the cloud answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def edge_home(config: EdgeConfig, base_dir: Path, environ: Mapping[str, str]) -> Path:
    """The supervisor's ``FIELDLINK_EDGE_HOME``, else ``[update] home``, else edge.toml's dir."""
    if environ.get(slots.HOME_ENV):
        return Path(environ[slots.HOME_ENV])
    if config.update.home:
        return base_dir / config.update.home
    return base_dir


def _install_bundle(bundle: Path, home: Path, version: str) -> Path:
    return slots.install_bundle(bundle, home, version)


class Agent:
    def __init__(  # every I/O dependency is injectable
        self,
        config: EdgeConfig,
        *,
        software_version: str = "",
        base_dir: Path | None = None,
        driver_factory: Callable[..., Driver] = make_driver,
        transport: httpx.AsyncBaseTransport | None = None,
        home: Path | None = None,
        supervised: bool = False,
        updater: EdgeUpdater | None = None,
        installer: BundleInstaller = _install_bundle,
        check_interval_s: float | None = None,
        set_log_level: Callable[[str], None] | None = None,
    ) -> None:
        base = base_dir or Path.cwd()
        self.config = config
        self.software_version = software_version
        self.credential_file = base / config.cloud.credential_file
        self.ca_file = base / config.cloud.ca
        self.url = config.cloud.url.rstrip("/")
        self.home = home or base
        self.supervised = supervised
        self.exit_code = 0
        self._driver_factory = driver_factory
        self._installer = installer
        self._set_log_level = set_log_level
        self.check_interval_s = float(check_interval_s or config.update.check_interval_s)
        self.device_id = read_device_id(self.home)
        # What the next report says; replaced (never changed in place) by ``_tell``.
        self.reported = DeviceReport(software_version=software_version[:100])
        self._refused_versions: set[str] = set()
        self._read_last_update()
        sources = self._applied_sources(config.sources)
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
        try:
            self.poller = self._first_poller(sources, config.sources)
        except BaseException:
            self.buffer.close()
            raise
        self._control = httpx.AsyncClient(
            verify=tls_context(self.ca_file),
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self.updater = updater or EdgeUpdater(
            self.url,
            home=self.home,
            ca_file=self.ca_file,
            credential_file=self.credential_file,
            software_version=software_version,
        )
        self._rotation: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._poller_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._report_due = asyncio.Event()
        self._report_due.set()  # one report at start
        self._healthy = False
        self._desired_config = 0
        self._offered: str | None = None
        self._config_tried: int | None = None
        self._update_tried: str | None = None
        self._last_check_code: str | None = None
        self.announced = asyncio.Event()
        self.checks = 0  # update checks finished
        self.last_report: DeviceReport | None = None

    # -- state from disk at start ----------------------------------------------------------------

    def _read_last_update(self) -> None:
        last = slots.read_last_update(self.home)
        if last is None:
            return
        if last.outcome == "rolled_back":
            # The supervisor went back from this version: never stage it again on our own.
            self._refused_versions.add(last.version)
            self._tell(
                update_version=last.version,
                update_state="rolled_back",
                update_error=last.reason[:300],
            )
        elif last.version == self.software_version:
            self._tell(update_version=last.version, update_state="running")

    def _applied_sources(self, fallback: list[Source]) -> list[Source]:
        """The sources of ``config/applied.json`` when it is this device's, else edge.toml's."""
        path = self.home / APPLIED_CONFIG
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return fallback
        except OSError as exc:
            log.warning("applied_config_unreadable", path=str(path), error=str(exc))
            return fallback
        if self.device_id is None:
            problem = "this device's id is unknown (no device.json): enroll again"
        else:
            try:
                desired = load_config_target(data, self.device_id)
            except ConfigError as exc:
                problem = exc.message
            else:
                self._remember_config(desired, data)
                return list(desired.sources)
        log.warning("applied_config_refused", path=str(path), error=problem)
        self._tell(config_error=f"applied.json: {problem}"[:300])
        return fallback

    def _first_poller(self, sources: list[Source], fallback: list[Source]) -> Poller:
        try:
            return Poller(sources, self._on_readings, driver_factory=self._driver_factory)
        except ConfigError as exc:
            if sources is fallback:
                raise
            # The applied configuration verified when it came but its drivers refuse now (a
            # file it names is gone): edge.toml's sources are the known-good fallback.
            log.warning("applied_config_refused", error=exc.message)
            self._tell(
                config_error=f"applied.json: {exc.message}"[:300], config_version=0, config_hash=""
            )
            return Poller(fallback, self._on_readings, driver_factory=self._driver_factory)

    def _remember_config(self, desired: DesiredConfig, data: bytes) -> None:
        self._tell(
            config_version=desired.version,
            config_hash=hashlib.sha256(data).hexdigest(),
            config_error="",
        )
        if self._set_log_level is not None:
            self._set_log_level(desired.log_level)

    # -- wiring ----------------------------------------------------------------------------------

    def _on_readings(self, readings: list[Reading], health: list[HealthReading]) -> None:
        # Synchronous on purpose: the cycle is on disk (fsynced) before the poller moves on.
        self.buffer.append(readings, health)

    def _on_ack(self, ack: Ack) -> None:
        if ack.rotate_credential and (self._rotation is None or self._rotation.done()):
            self._rotation = asyncio.get_running_loop().create_task(self._rotate())
        self._exchanged()
        self._signals(ack.desired_config_version, ack.update_available)

    def _exchanged(self) -> None:
        """The cloud answered 200: this version works as far as the supervisor is concerned."""
        if self._healthy:
            return
        self._healthy = True
        try:
            slots.mark_healthy(self.home, self.software_version)
        except OSError as exc:
            log.error("mark_healthy_failed", error=str(exc))  # noqa: TRY400 - no traceback needed

    def _signals(self, desired_config: int, offered: str | None) -> None:
        self._desired_config = desired_config
        self._offered = offered
        if self.config_wanted() or self.update_wanted():
            self._wake.set()

    def config_wanted(self) -> bool:
        """The cloud wants a configuration version that is neither running nor just tried."""
        desired = self._desired_config
        return desired > 0 and desired not in {self.reported.config_version, self._config_tried}

    def update_wanted(self) -> bool:
        """The cloud offers a version that is not running, not just tried, not rolled back."""
        offered = self._offered
        return (
            offered is not None
            and offered not in {self.software_version, self._update_tried}
            and offered not in self._refused_versions
        )

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

    async def announce(self, poller: Poller | None = None) -> bool:
        """Tell the cloud what this agent (or ``poller``) reads, retrying until it is answered.

        Sending waits for this (``announced``): values of points the cloud does not know yet
        would be refused and quarantined. If the cloud refuses the announcement itself (a 4xx:
        e.g. a unit it does not know), that is logged and sending starts anyway, for the points
        an admin created by hand. Failures are logged once, with their cause; retries are quiet.
        False if the agent stopped first.
        """
        message = Announce(instruments=[i.announce() for i in (poller or self.poller).describe()])
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
                    return True
                if not logged:
                    log.warning("announce_failed", error=str(exc))
                    logged = True
                await self._pause(delay * random.uniform(0.5, 1))  # noqa: S311
                delay = min(delay * 2, ANNOUNCE_RETRY_CAP_S)
                continue
            log.info("announced", instruments=len(message.instruments))
            self.announced.set()
            return True
        return False

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _after_announce(self) -> bool:
        announced = asyncio.create_task(self.announced.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([announced, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in (announced, stopping):
            task.cancel()
        return not self._stopping.is_set()

    async def _send_after_announce(self) -> None:
        if await self._after_announce():
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
        if self.device_id is None:
            # Enrolled before device.json existed: the rotation answer names the device.
            with contextlib.suppress(OSError):
                write_device_identity(self.home, issued.device_id, issued.device_name)
            self.device_id = issued.device_id

    # -- reports ---------------------------------------------------------------------------------

    def _tell(self, **changes: Any) -> None:
        """Change what the next report says (the struct is frozen: a new one replaces it)."""
        self.reported = msgspec.structs.replace(self.reported, **changes)

    async def report_once(self) -> None:
        """Send the current report; ControlError if it should be sent again later.

        A 4xx other than 429 is final (this report will never be taken as it is): logged, not
        retried. 429 (at most 30 reports a minute), 5xx and network errors are retried later.
        """
        report = self.reported
        try:
            data = await self._post(REPORT_PATH, msgspec.json.encode(report))
        except ControlError as exc:
            if exc.status is None or exc.status == 429 or not 400 <= exc.status < 500:
                raise
            log.warning("report_refused", error=str(exc))
            self.last_report = report
            return
        self.last_report = report
        self._exchanged()
        try:
            answer = msgspec.json.decode(data, type=ReportAck)
        except msgspec.DecodeError:
            return
        self._signals(answer.desired_config_version, answer.update_available)

    async def _reporter(self) -> None:
        """Send a report whenever ``_report_due`` is set and it says something new."""
        if not await self._after_announce():
            return
        sent: DeviceReport | None = None
        delay = 2.0
        logged = False
        while not self._stopping.is_set():
            waiting = asyncio.create_task(self._report_due.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in (waiting, stopping):
                task.cancel()
            if self._stopping.is_set():
                return
            self._report_due.clear()
            if self.reported == sent:
                continue
            try:
                await self.report_once()
            except ControlError as exc:
                if not logged:
                    log.warning("report_failed", error=str(exc))
                    logged = True
                self._report_due.set()
                await self._pause(delay * random.uniform(0.5, 1))  # noqa: S311
                delay = min(delay * 2, REPORT_RETRY_CAP_S)
                continue
            sent = self.last_report
            delay, logged = 2.0, False

    # -- update checks ---------------------------------------------------------------------------

    async def _updates(self) -> None:
        """One check at a time: on a signal, and periodically (so expiry is noticed)."""
        loop = asyncio.get_running_loop()
        first = min(self.check_interval_s, FIRST_CHECK_MAX_S)
        next_check = loop.time() + first * random.uniform(0.5, 1.0)  # noqa: S311
        while not self._stopping.is_set():
            waiting = asyncio.create_task(self._wake.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait(
                [waiting, stopping],
                timeout=max(next_check - loop.time(), 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in (waiting, stopping):
                task.cancel()
            if self._stopping.is_set():
                return
            periodic = not self._wake.is_set()
            self._wake.clear()
            if periodic:
                jitter = random.uniform(1 - CHECK_JITTER, 1 + CHECK_JITTER)  # noqa: S311
                next_check = loop.time() + self.check_interval_s * jitter
                # A periodic check retries what failed before (the repository may be fixed).
                self._config_tried = self._update_tried = None
            try:
                await self.check(periodic=periodic)
            except Exception as exc:  # a bug in a check must not end the agent
                log.exception("update_check_crashed")
                self._checked(UpdateCheckError("repository_error", repr(exc)))

    async def check(self, *, periodic: bool = True) -> None:
        """Apply a wanted configuration, install a wanted version, or just refresh metadata."""
        did = False
        if self.config_wanted():
            did = True
            await self._apply_config()
        if self.update_wanted() and not self._stopping.is_set():
            did = True
            await self._install_update()
        if periodic and not did:
            await self._refresh()
        self.checks += 1

    def _checked(self, error: UpdateCheckError | None) -> None:
        """Record a check's outcome (logged when the outcome changes) and report it."""
        code = "" if error is None else error.check_code
        if code != self._last_check_code:
            if error is None:
                log.info("update_check_ok")
            else:
                log.warning("update_check_failed", code=code, error=error.message)
            self._last_check_code = code
        self._tell(
            check_ok=error is None,
            check_error_code=code,
            check_error="" if error is None else error.message[:300],
            checked_at_ms=now_ms(),
        )
        self._report_due.set()

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.updater.refresh)
        except UpdateCheckError as exc:
            self._checked(exc)
            return
        self._checked(None)

    def _config_failed(self, message: str) -> None:
        if message != self.reported.config_error:
            log.warning("config_not_applied", error=message)
        self._tell(config_error=message[:300])
        self._report_due.set()

    async def _apply_config(self) -> None:
        self._config_tried = self._desired_config
        device_id = self.device_id
        if device_id is None:
            self._config_failed("this device's id is unknown (no device.json): enroll again")
            return
        data = await self._fetch_config(device_id)
        if data is None:
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.reported.config_hash:
            return  # the signed configuration is the one running (the cloud is ahead of it)
        try:
            desired, poller = self._prepare_config(data, device_id)
        except ConfigError as exc:
            self._config_failed(exc.message)
            return
        try:
            path = self.home / APPLIED_CONFIG
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Before the switch: a crash from here on restarts with the new configuration.
            write_atomically(path, data, 0o600)
        except OSError as exc:
            self._config_failed(f"cannot store the configuration: {exc}")
            return
        if not await self.announce(poller):
            return
        self._switch_poller(poller)
        self._remember_config(desired, data)
        log.info("config_applied", version=desired.version, sources=len(desired.sources))
        self._report_due.set()

    async def _fetch_config(self, device_id: str) -> bytes | None:
        try:
            data = await asyncio.to_thread(self.updater.fetch_config, device_id)
        except UpdateCheckError as exc:
            self._checked(exc)
            self._config_failed(f"{exc.check_code}: {exc.message}")
            return None
        self._checked(None)
        return data

    def _prepare_config(self, data: bytes, device_id: str) -> tuple[DesiredConfig, Poller]:
        """The verified target checked for this device, and its poller; or ConfigError."""
        desired = load_config_target(data, device_id)
        if desired.version <= self.reported.config_version:
            raise ConfigError(
                f"version: {desired.version} is not newer than the applied "
                f"{self.reported.config_version} (a configuration never goes back)"
            )
        # Drivers are built here, so a source that cannot work (make_driver raises
        # ConfigError) is refused before anything changes, as at start.
        return desired, Poller(
            desired.sources, self._on_readings, driver_factory=self._driver_factory
        )

    def _switch_poller(self, poller: Poller) -> None:
        old, self.poller = self.poller, poller
        self._poller_changed.set()
        old.stop()

    async def _run_pollers(self) -> None:
        """Run the current poller; when a configuration replaced it, run the new one."""
        while not self._stopping.is_set():
            self._poller_changed.clear()
            await self.poller.run()
            if self._stopping.is_set():
                return
            if not self._poller_changed.is_set():
                # No sources (run() ended at once): wait for a configuration or the end.
                changed = asyncio.create_task(self._poller_changed.wait())
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait([changed, stopping], return_when=asyncio.FIRST_COMPLETED)
                for task in (changed, stopping):
                    task.cancel()

    def _update_state(self, version: str, state: str, error: str = "") -> None:
        self._tell(update_version=version[:100], update_state=state, update_error=error[:300])
        self._report_due.set()

    async def _install_update(self) -> None:
        version = self._offered
        if version is None:
            return
        self._update_tried = version
        if not self.supervised:
            self._update_state(
                version,
                "refused",
                "this agent is not run by its supervisor (fieldlink edge supervise); "
                "updates are not installed",
            )
            return
        self._update_state(version, "downloading")
        try:
            download = await asyncio.to_thread(self.updater.fetch_software, version)
        except UpdateCheckError as exc:
            self._checked(exc)
            state = "refused" if exc.check_code in _REFUSALS else "failed"
            self._update_state(version, state, f"{exc.check_code}: {exc.message}")
            return
        self._checked(None)
        self._update_state(version, "installing")
        try:
            await asyncio.to_thread(self._installer, download.path, self.home, version)
            slots.write_staged(self.home, version)
        except (slots.SlotError, OSError) as exc:  # refused bundle, failed pip, full disk
            log.warning("update_install_failed", version=version, error=str(exc)[:300])
            self._update_state(version, "failed", f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.updater.discard(download)
        log.info("update_staged", version=version)
        self._update_state(version, "restarting")
        # Best effort: the supervisor's outcome is reported by the next version anyway.
        with contextlib.suppress(ControlError, TimeoutError):
            async with asyncio.timeout(10):
                await self.report_once()
        self.exit_code = slots.EXIT_RESTART_FOR_UPDATE
        self.stop()

    # -- running ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.poller.stop()
        self.uplink.stop()
        self.updater.cancel()

    async def run(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT when installed by ``main``).

        If the poller or the uplink ends on an unexpected error, the agent stops (and its
        supervisor restarts it): nothing is lost, the buffer is on disk.
        """
        log.info("agent_started", sources=len(self.poller.states()), version=self.software_version)
        workers = [
            asyncio.create_task(self._run_pollers(), name="poller"),
            asyncio.create_task(self._send_after_announce(), name="uplink"),
        ]
        helpers = [
            asyncio.create_task(self.announce(), name="announce"),
            asyncio.create_task(self._reporter(), name="reporter"),
            asyncio.create_task(self._updates(), name="updates"),
        ]
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
            pending = [*workers, *helpers, stopping]
            _, late = await asyncio.wait(pending, timeout=15)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._rotation is not None:
                await asyncio.gather(self._rotation, return_exceptions=True)
            await self.uplink.aclose()
            await self._control.aclose()
            self.buffer.close()
            log.info("agent_stopped", exit_code=self.exit_code)
        if failure is not None:
            raise failure


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


async def main(
    config: EdgeConfig,
    *,
    software_version: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the agent until it stops; the process's exit code (75: restart into an update)."""
    env = os.environ if environ is None else environ
    # httpx logs every request at INFO: one line per batch. The agent logs transitions only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    agent = Agent(
        config,
        software_version=software_version,
        base_dir=base_dir,
        home=edge_home(config, base_dir, env),
        supervised=bool(env.get(slots.HOME_ENV)),
        set_log_level=_set_log_level,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    await agent.run()
    return agent.exit_code
