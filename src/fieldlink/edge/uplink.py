"""The outbound HTTPS uplink: batches from the durable buffer to ``POST /edge/v1/telemetry``.

Only ever a client: it opens no listening socket, and every exchange is a request it makes.

Transport
    HTTPS only (an ``http://`` URL is refused when the uplink is built). The server certificate
    must chain to the configured CA bundle (never the system store) and name the host; TLS 1.2
    or newer (``kit.tls.client_ssl_context``). No proxy or CA from the environment. The device
    credential is read once from its 0600 file; ``swap_credential`` replaces it (rotation).
    Bodies are gzip-compressed. A response is read up to ``max_response_bytes`` (64 KiB); a
    larger one, an unreadable one or an ``Ack`` that does not decode is an error: the batch
    stays in the buffer and is resent (same sequence, same bytes) after a backoff.

Answers
    200: the ``Ack`` goes to ``Buffer.ack``. 429 and 503 with ``Retry-After``: that lane waits
    exactly that long (at most an hour: a broken header must not park the agent for days).
    Network errors, 5xx and other answers: exponential backoff with full jitter
    (``random() * min(cap, base * 2**n)``, cap 60 s). 401: the credential was refused (revoked,
    or rotated away): sending stops, the buffer keeps filling, it is logged once, and sending
    resumes after ``swap_credential``. 413/422: the cloud will never accept this batch as it is;
    retrying would block the lane forever, so the buffer reworks it (splits it, or moves the
    refused values to its quarantine and reports them as a gap: ``Buffer.refuse``), logged
    once per refusal code, and the lane moves on at once.

Lanes
    ``run`` keeps up to two requests in flight, one per lane (``backlog`` drains at full speed,
    ``live`` keeps current values flowing); each lane has its own backoff and its own
    ``Retry-After`` (the cloud's live and backlog budgets are separate limits).

Logs are written on state changes only (unreachable once, recovered once), never per batch.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from fieldlink.edge.buffer import Buffer, FormedBatch, Lane
from fieldlink.edge.enroll import EnrollmentError, read_credential, tls_context
from fieldlink.kit.logging import get_logger
from fieldlink.protocol.telemetry import Ack, AgentStatus

__all__ = ["Outcome", "Uplink", "UplinkConfigError", "UplinkStatus"]

TELEMETRY_PATH: Final = "/edge/v1/telemetry"
MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_RETRY_AFTER_S: Final = 3600.0
GZIP_LEVEL: Final = 5
# The status a batch carries is recomputed at most this often (it costs a few queries).
STATUS_EVERY_S: Final = 10.0

State = Literal[
    "starting", "online", "unreachable", "rate_limited", "credential_refused", "stopped"
]
OutcomeKind = Literal["idle", "acked", "reworked", "retry", "rate_limited", "unauthorized"]

log = get_logger(__name__)


class UplinkConfigError(Exception):
    """The uplink cannot start as configured; the message says what to fix."""


class _ResponseError(Exception):
    """The answer could not be used (too large, encoded, cut off)."""


@dataclass
class UplinkStatus:
    state: State = "starting"
    last_error: str = ""
    last_success: float | None = None  # clock() of the last acknowledged batch
    last_ack: Ack | None = None
    requests: int = 0  # requests sent (attempts that reached the HTTP layer)
    retry_after: dict[str, float] = field(default_factory=dict)  # lane -> seconds, last told


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    delay: float = 0.0  # how long the lane waits before its next exchange
    sequence: int | None = None
    detail: str = ""


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UplinkConfigError(
            f"The cloud URL must start with https:// (got {url!r}); plain HTTP is never used."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UplinkConfigError("The cloud URL must be https://host[:port] with nothing else.")
    return url.rstrip("/")


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _error_fields(data: bytes) -> tuple[str, str, int | None]:
    """``code``, ``message`` and ``details.index`` of a JSON error body (blank if unreadable)."""
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return "", "", None
    if not isinstance(doc, dict):
        return "", "", None
    details = doc.get("details")
    index = details.get("index") if isinstance(details, dict) else None
    return (
        str(doc.get("code", ""))[:64],
        str(doc.get("message", ""))[:300],
        index if isinstance(index, int) and not isinstance(index, bool) else None,
    )


class Uplink:
    def __init__(
        self,
        url: str,
        *,
        ca_file: Path,
        credential_file: Path,
        buffer: Buffer,
        software_version: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        idle_s: float = 0.5,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        on_ack: Callable[[Ack], None] | None = None,
    ) -> None:
        self._url = _check_url(url) + TELEMETRY_PATH
        try:
            context = tls_context(ca_file)
            self._token = read_credential(credential_file)
        except EnrollmentError as exc:
            raise UplinkConfigError(str(exc)) from exc
        self.credential_file = credential_file
        self.buffer = buffer
        self.software_version = software_version
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.idle_s = idle_s
        self.max_response_bytes = max_response_bytes
        self.on_ack = on_ack
        self._client = httpx.AsyncClient(
            verify=context,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            trust_env=False,  # no proxy or CA from the environment: only what was configured
            transport=transport,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        )
        self.status = UplinkStatus()
        self._failures: dict[str, int] = {"live": 0, "backlog": 0}
        self._in_flight: set[int] = set()
        self._credential_ok = asyncio.Event()
        self._credential_ok.set()
        self._stop = asyncio.Event()
        self._logged_codes: set[str] = set()
        self._agent_status: tuple[float, AgentStatus] | None = None

    # -- credential ------------------------------------------------------------------------------

    def swap_credential(self, token: str) -> None:
        """Use ``token`` from the next request on (after a rotation or a re-enrollment)."""
        self._token = token
        if self.status.state == "credential_refused":
            self._set_state("starting", "")
        self._credential_ok.set()

    def reload_credential(self) -> None:
        """Read the credential file again (``fieldlink edge enroll`` wrote a new one)."""
        try:
            self.swap_credential(read_credential(self.credential_file))
        except EnrollmentError as exc:
            raise UplinkConfigError(str(exc)) from exc

    # -- state -----------------------------------------------------------------------------------

    def _set_state(self, state: State, error: str) -> None:
        previous = self.status.state
        self.status.state = state
        if error:
            self.status.last_error = error
        if state == previous:
            return
        if state == "online":
            log.info("uplink.online", recovered_from=previous)
        elif state == "unreachable":
            log.warning("uplink.unreachable", error=error)
        elif state == "rate_limited":
            log.warning("uplink.rate_limited", error=error)
        elif state == "credential_refused":
            log.error(
                "uplink.credential_refused",
                error=error,
                hint="The cloud refused this device's credential (revoked or replaced). "
                "Values stay buffered; enroll the device again to resume.",
            )

    def _status_for_batch(self) -> AgentStatus:
        now = self._clock()
        if self._agent_status is None or now - self._agent_status[0] >= STATUS_EVERY_S:
            stats = self.buffer.stats()
            status = AgentStatus(
                software_version=self.software_version[:100],
                buffer_values=stats.depth,
                oldest_unsent_age_s=stats.oldest_unsent_age_s,
                dropped_total=stats.dropped_total,
                last_error=self.status.last_error[:300],
            )
            self._agent_status = (now, status)
        return self._agent_status[1]

    def _backoff(self, lane: Lane) -> float:
        self._failures[lane] += 1
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(self._failures[lane] - 1, 30))
        return float(self._rand() * ceiling)

    # -- one exchange ----------------------------------------------------------------------------

    async def exchange(self, lane: Lane) -> Outcome:
        """At most one request for ``lane``: the next batch sent and its answer applied."""
        if not self._credential_ok.is_set():
            return Outcome("unauthorized")
        batch = self.buffer.next_batch(
            lane, exclude=self._in_flight, status=self._status_for_batch()
        )
        if batch is None:
            return Outcome("idle", self.idle_s)
        self._in_flight.add(batch.sequence)
        try:
            return await self._send(lane, batch)
        finally:
            self._in_flight.discard(batch.sequence)

    async def _send(self, lane: Lane, batch: FormedBatch) -> Outcome:
        seq = batch.sequence
        try:
            code, retry_header, data = await self._post(batch.body)
        except (httpx.HTTPError, _ResponseError) as exc:
            return self._failed(lane, seq, f"{type(exc).__name__}: {exc}")
        if code == 200:
            return self._accepted(lane, seq, data)
        error_code, message, index = _error_fields(data)
        error = f"HTTP {code} {error_code}: {message}".strip()[:300]
        if code == 401:
            self._credential_ok.clear()
            self._set_state("credential_refused", error)
            return Outcome("unauthorized", 0.0, seq, error)
        if code in (413, 422):
            rework = self.buffer.refuse(
                seq, status=code, code=error_code, message=message, index=index
            )
            if error_code not in self._logged_codes:
                self._logged_codes.add(error_code)
                log.warning(
                    "uplink.batch_refused",
                    status=code,
                    code=error_code,
                    message=message,
                    action=rework.action,
                    quarantined=rework.quarantined,
                )
            return Outcome("reworked", 0.0, seq, error)
        wait = _retry_after(retry_header, self._clock()) if code in (429, 503) else None
        if wait is None:
            return self._failed(lane, seq, error)
        self.status.retry_after[lane] = wait
        self._set_state("rate_limited" if code == 429 else "unreachable", error)
        return Outcome("rate_limited", wait, seq, error)

    def _failed(self, lane: Lane, seq: int, error: str) -> Outcome:
        error = error[:300]
        self._set_state("unreachable", error)
        return Outcome("retry", self._backoff(lane), seq, error)

    def _accepted(self, lane: Lane, seq: int, data: bytes) -> Outcome:
        try:
            ack = msgspec.json.decode(data, type=Ack)
        except msgspec.DecodeError as exc:
            return self._failed(lane, seq, f"The cloud's acknowledgement was not understood: {exc}")
        self.buffer.ack(ack, seq)
        self._failures[lane] = 0
        self.status.last_ack = ack
        self.status.last_success = self._clock()
        self.status.retry_after.pop(lane, None)
        self._set_state("online", "")
        if self.on_ack is not None:
            self.on_ack(ack)
        return Outcome("acked", 0.0, seq)

    async def _post(self, body: bytes) -> tuple[int, str | None, bytes]:
        headers = {
            "authorization": f"Bearer {self._token}",
            "content-type": "application/json",
            "content-encoding": "gzip",
            "accept-encoding": "identity",
            "user-agent": f"fieldlink-edge/{self.software_version or 'dev'}",
        }
        content = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        self.status.requests += 1
        async with self._client.stream(
            "POST", self._url, content=content, headers=headers
        ) as response:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding != "identity":
                raise _ResponseError(f"the answer is {encoding}-encoded; none was asked for")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _ResponseError(f"the answer is larger than {self.max_response_bytes}")
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > self.max_response_bytes:
                    raise _ResponseError(f"the answer is larger than {self.max_response_bytes}")
            return response.status_code, response.headers.get("retry-after"), bytes(data)

    # -- the loop --------------------------------------------------------------------------------

    async def _lane(self, lane: Lane) -> None:
        while True:
            if not self._credential_ok.is_set():
                await self._credential_ok.wait()
                continue
            outcome = await self.exchange(lane)
            if outcome.delay > 0:
                await self._sleep(outcome.delay)

    async def run(self) -> None:
        """Send until ``stop()``; a lane that fails unexpectedly ends the loop with its error.

        A ``stop()`` that came before ``run()`` is kept (the flag is reset only on the way out),
        so a SIGTERM during start-up is not lost.
        """
        lanes = [asyncio.create_task(self._lane(lane)) for lane in ("backlog", "live")]
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*lanes, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()
        finally:
            # Cancelling mid-request loses nothing: the batch stays formed in the buffer and is
            # resent with the same sequence. Buffer calls are synchronous, never cut in half.
            for task in [*lanes, stopper]:
                task.cancel()
            await asyncio.gather(*lanes, stopper, return_exceptions=True)
            self.status.state = "stopped"
            self._stop.clear()

    def stop(self) -> None:
        self._stop.set()

    async def aclose(self) -> None:
        await self._client.aclose()
