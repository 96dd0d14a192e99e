"""The uplink against the real cloud (``fieldlink serve`` over real TLS, its own database).

Faults the real cloud cannot produce on demand (429/503 with Retry-After, a malformed or
oversized acknowledgement, a slow answer, a 5xx) come from ``StubCloud``, a loopback TLS server
in this process (``conftest.py``); everything else — storing, duplicates, refusals, revocation,
certificate checks — is the real cloud.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

from fieldlink.edge.buffer import Buffer
from fieldlink.edge.uplink import Outcome, Uplink, UplinkConfigError
from fieldlink.kit.tls import ensure_local_pki
from tests.edge.conftest import (
    STUB_TOKEN,
    CloudDevice,
    Received,
    Reply,
    StubCloud,
    ack_body,
    cloud_counts,
    listening_sockets,
    make_device,
    now_ms,
    pki_for,
    readings,
    revoke,
)
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

HOUR_MS = 3_600_000
PADDED_ACK = ack_body(1)[:-1] + b', "pad": "' + b"x" * 70_000 + b'"}'
T = TypeVar("T")
P = ParamSpec("P")


def sync(test: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async test on a fresh event loop (the agent's one loop, as in production)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run(test(*args, **kwargs))

    return run


def uplink_for(server: RunningServer, device: CloudDevice, buffer: Buffer, **kw: object) -> Uplink:
    options: dict[str, object] = {"ca_file": server.ca_cert, "idle_s": 0.02, **kw}
    return Uplink(
        server.base_url,
        credential_file=device.credential_file,
        buffer=buffer,
        **options,  # type: ignore[arg-type]
    )


async def run_until(
    uplink: Uplink, done: Callable[[], bool], *, within: float = 30.0
) -> set[tuple[str, int]]:
    """Run the uplink until ``done()``; the listening sockets seen meanwhile (sampled)."""
    seen: set[tuple[str, int]] = set()
    task = asyncio.create_task(uplink.run())
    deadline = time.monotonic() + within
    try:
        while not done():
            assert time.monotonic() < deadline, f"not done in {within}s: {uplink.status}"
            assert not task.done(), task.exception()
            seen |= listening_sockets()
            await asyncio.sleep(0.02)
    finally:
        uplink.stop()
        await task
        await uplink.aclose()
    return seen


def drained(buffer: Buffer) -> Callable[[], bool]:
    def check() -> bool:
        stats = buffer.stats()
        return stats.depth == 0 and stats.batches_in_flight == 0 and stats.gaps_pending == 0

    return check


# -- the real cloud ---------------------------------------------------------------------------


@pytest.mark.backend
@sync
async def test_batches_are_stored_once_and_leave_the_buffer_only_when_acknowledged(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    now = now_ms()
    buffer = Buffer(tmp_path / "buffer.sqlite", batch_values=700)
    old = readings(device.point("flow"), 3000, start_ms=now - HOUR_MS, step_ms=100)
    live = readings(device.point("pressure"), 40, start_ms=now - 2000, step_ms=10)
    buffer.append(old)
    buffer.append(live)
    before = listening_sockets()

    seen = await run_until(uplink_for(server, device, buffer), drained(buffer))

    assert seen <= before, f"the uplink opened a listening socket: {seen - before}"
    counts = cloud_counts(server, device)
    sequences = [r[0] for r in counts.receipts]
    assert sequences == list(range(1, len(sequences) + 1))  # each batch once, none skipped
    assert counts.values == counts.samples == 3040
    assert counts.acked == sequences[-1]
    lanes = {r[2] for r in counts.receipts}
    assert lanes == {True, False}  # the backlog drained next to the live lane
    assert buffer.formed() == []
    buffer.close()


@pytest.mark.backend
@sync
async def test_a_batch_resent_after_a_crash_is_stored_once_then_deleted(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    path = tmp_path / "buffer.sqlite"
    buffer = Buffer(path)
    buffer.append(readings(device.point(), 100, start_ms=now_ms() - HOUR_MS))
    batch = buffer.next_batch("backlog")
    assert batch is not None
    # Sent and stored, then the agent dies before it could apply the ack (the state kill -9
    # leaves: the buffer is not told anything).
    with server.client() as client:
        answer = client.post(
            "/edge/v1/telemetry",
            content=batch.body,
            headers={"authorization": f"Bearer {device.token}"},
        )
    assert answer.status_code == 200, answer.text
    buffer.close()

    buffer = Buffer(path)
    uplink = uplink_for(server, device, buffer)
    outcome = await uplink.exchange("backlog")
    await uplink.aclose()

    assert outcome == Outcome("acked", 0.0, batch.sequence)
    assert uplink.status.last_ack is not None
    assert uplink.status.last_ack.duplicate
    assert buffer.formed() == []
    assert buffer.stats().depth == 0
    counts = cloud_counts(server, device)
    assert counts.receipts == [(batch.sequence, 100, True)]
    assert counts.samples == 100
    buffer.close()


@pytest.mark.backend
@sync
async def test_a_new_buffer_file_is_renumbered_past_the_cloud_not_dropped_as_duplicate(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    start = now_ms() - HOUR_MS
    first = Buffer(tmp_path / "first.sqlite", batch_values=10)
    first.append(readings(device.point(), 30, start_ms=start))
    await run_until(uplink_for(server, device, first), drained(first))
    first.close()
    assert cloud_counts(server, device).acked == 3

    # The disk was replaced: a fresh buffer starts again at sequence 1, which the cloud has.
    second = Buffer(tmp_path / "second.sqlite", batch_values=10)
    second.append(readings(device.point(), 10, start_ms=start + 1000, first=1000))
    await run_until(uplink_for(server, device, second), drained(second))

    counts = cloud_counts(server, device)
    assert counts.samples == 40  # nothing silently dropped as a "duplicate"
    assert [r[0] for r in counts.receipts] == [1, 2, 3, 4]
    second.close()


@pytest.mark.backend
@sync
async def test_values_of_a_point_the_cloud_does_not_know_are_quarantined_the_rest_stored(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = make_device(server, tmp_path)
    start = now_ms() - HOUR_MS
    buffer = Buffer(tmp_path / "buffer.sqlite")
    good = readings(device.point("flow"), 50, start_ms=start)
    unknown = readings(f"{device.tag}/no_such_point", 7, start_ms=start)
    buffer.append([v for pair in zip(good, unknown, strict=False) for v in pair] + good[7:])

    await run_until(uplink_for(server, device, buffer), drained(buffer))

    counts = cloud_counts(server, device)
    assert counts.samples == 50
    assert counts.receipts == [(1, 50, True)]  # the same sequence, resent without them
    held = buffer.quarantined()
    assert sorted(v.value for _, v, _ in held) == [float(i) for i in range(7)]
    assert {code for _, _, code in held} == {"point_unknown"}
    assert buffer.stats().quarantined_total == 7
    refusals = [r for r in caplog.records if "uplink.batch_refused" in r.getMessage()]
    assert len(refusals) == 1
    buffer.close()


@pytest.mark.backend
@sync
async def test_a_batch_too_large_for_the_cloud_is_split_and_stored(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    # Larger than the protocol's 10,000 values per batch: the cloud refuses it with 413.
    buffer = Buffer(tmp_path / "buffer.sqlite", batch_values=12_000)
    buffer.append(readings(device.point(), 12_000, start_ms=now_ms() - 2 * HOUR_MS, step_ms=50))

    await run_until(uplink_for(server, device, buffer), drained(buffer))

    counts = cloud_counts(server, device)
    assert counts.receipts == [(1, 6000, True), (2, 6000, True)]
    assert counts.samples == 12_000
    assert buffer.stats().quarantined_total == 0
    buffer.close()


@pytest.mark.backend
@sync
async def test_a_revoked_credential_stops_sending_and_the_values_stay_buffered(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = make_device(server, tmp_path)
    start = now_ms() - HOUR_MS
    buffer = Buffer(tmp_path / "buffer.sqlite", batch_values=20)
    buffer.append(readings(device.point(), 20, start_ms=start))
    uplink = uplink_for(server, device, buffer)
    assert (await uplink.exchange("backlog")).kind == "acked"

    revoke(server, device)
    buffer.append(readings(device.point(), 60, start_ms=start + 10_000, first=100))
    task = asyncio.create_task(uplink.run())
    deadline = time.monotonic() + 20
    while uplink.status.state != "credential_refused":
        assert time.monotonic() < deadline, uplink.status
        await asyncio.sleep(0.02)
    sent = uplink.status.requests
    await asyncio.sleep(1.0)  # idle_s is 0.02: a loop that kept trying would send ~50 more
    assert uplink.status.requests == sent
    assert not task.done()
    uplink.stop()
    await task
    await uplink.aclose()

    assert "401" in uplink.status.last_error
    assert buffer.stats().depth == 60  # nothing dropped, nothing deleted
    assert cloud_counts(server, device).samples == 20
    logged = [r for r in caplog.records if "uplink.credential_refused" in r.getMessage()]
    assert len(logged) == 1
    assert device.token not in caplog.text
    buffer.close()


@pytest.mark.backend
@sync
async def test_wrong_ca_sends_nothing_and_keeps_the_batch(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    other = ensure_local_pki(tmp_path / "other-ca", ["localhost"])
    buffer = Buffer(tmp_path / "buffer.sqlite")
    buffer.append(readings(device.point(), 10, start_ms=now_ms() - HOUR_MS))
    uplink = uplink_for(server, device, buffer, ca_file=other.ca_cert)

    outcome = await uplink.exchange("backlog")
    await uplink.aclose()

    assert outcome.kind == "retry"
    assert "certificate verify failed" in outcome.detail
    assert uplink.status.state == "unreachable"
    assert cloud_counts(server, device).receipts == []
    (kept,) = buffer.formed()
    assert (kept.sequence, kept.values) == (1, 10)
    buffer.close()


# -- transport rules ----------------------------------------------------------------------------


def test_plain_http_is_refused_when_the_uplink_is_built(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    with (
        Buffer(tmp_path / "b.sqlite") as buffer,
        pytest.raises(UplinkConfigError, match="https://"),
    ):
        Uplink(
            "http://localhost:8080",
            ca_file=stub_pki[0],
            credential_file=stub_credential,
            buffer=buffer,
        )


@sync
async def test_wrong_host_name_is_refused_before_a_byte_of_the_batch_is_sent(
    tmp_path: Path, stub_credential: Path
) -> None:
    # A valid certificate from the trusted CA, but for another host.
    ca, cert, key = pki_for(tmp_path / "elsewhere", "elsewhere.example")
    buffer = Buffer(tmp_path / "b.sqlite")
    buffer.append(readings("FIT-1/flow", 5, start_ms=now_ms() - HOUR_MS))
    with StubCloud(cert, key, lambda _: Reply(200, ack_body(1))) as stub:
        uplink = Uplink(
            f"https://127.0.0.1:{stub.port}",
            ca_file=ca,
            credential_file=stub_credential,
            buffer=buffer,
        )
        outcome = await uplink.exchange("backlog")
        await uplink.aclose()
    assert outcome.kind == "retry"
    assert "match" in outcome.detail  # "IP address mismatch"
    assert stub.received == []
    assert stub.handshakes_failed == 1
    assert buffer.stats().depth == 5
    buffer.close()


# -- faults from the stub ------------------------------------------------------------------------


class FakeTime:
    """The uplink's clock and sleep: sleeps are recorded with the requests sent so far."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[tuple[float, int]] = []
        self.uplink: Uplink | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert self.uplink is not None
        self.sleeps.append((seconds, self.uplink.status.requests))
        self.now += seconds
        await asyncio.sleep(0)


def stub_uplink(
    stub: StubCloud,
    stub_pki: tuple[Path, Path, Path],
    credential: Path,
    buffer: Buffer,
    fake: FakeTime,
    **kw: object,
) -> Uplink:
    uplink = Uplink(
        f"https://127.0.0.1:{stub.port}",
        ca_file=stub_pki[0],
        credential_file=credential,
        buffer=buffer,
        clock=fake.clock,
        sleep=fake.sleep,
        rand=lambda: 0.5,
        idle_s=0.01,
        **kw,  # type: ignore[arg-type]
    )
    fake.uplink = uplink
    return uplink


def scripted(*replies: Reply) -> Callable[[Received], Reply]:
    queue = list(replies)

    def next_reply(got: Received) -> Reply:
        return queue.pop(0) if queue else Reply(200, ack_body(got.batch["sequence"]))

    return next_reply


async def drain(uplink: Uplink, buffer: Buffer) -> None:
    task = asyncio.create_task(uplink.run())
    deadline = time.monotonic() + 20
    try:
        while not drained(buffer)():
            assert time.monotonic() < deadline, uplink.status
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
    finally:
        uplink.stop()
        await task
        await uplink.aclose()


@pytest.mark.parametrize("status", [429, 503])
@sync
async def test_retry_after_is_obeyed_exactly(
    status: int, tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    buffer.append(readings("FIT-1/flow", 5, start_ms=now_ms() - HOUR_MS))
    limited = Reply(
        status,
        b'{"code": "rate_limited", "message": "Too many values (device_backlog).",'
        b' "details": {"limit": "device_backlog"}}',
        (("retry-after", "7"),),
    )
    fake = FakeTime()
    with StubCloud(stub_pki[1], stub_pki[2], scripted(limited)) as stub:
        uplink = stub_uplink(stub, stub_pki, stub_credential, buffer, fake)
        await drain(uplink, buffer)
    first, second = stub.received
    assert first.body == second.body  # the same batch, byte for byte
    assert first.batch["sequence"] == second.batch["sequence"] == 1
    # After the refusal (1 request sent) the backlog lane waited exactly 7 s, then resent.
    backlog_waits = [s for s in fake.sleeps if s[1] == 1 and s[0] != 0.01]
    assert backlog_waits == [(7.0, 1)]
    assert uplink.status.retry_after == {}  # cleared by the success


@sync
async def test_server_errors_back_off_exponentially_with_full_jitter_then_reset(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    old = now_ms() - HOUR_MS
    buffer.append(readings("FIT-1/flow", 5, start_ms=old))
    fake = FakeTime()
    failing = [Reply(500, b'{"code": "internal"}')] * 9
    with StubCloud(stub_pki[1], stub_pki[2], scripted(*failing)) as stub:
        uplink = stub_uplink(stub, stub_pki, stub_credential, buffer, fake)
        outcomes = [await uplink.exchange("backlog") for _ in range(10)]
        buffer.append(readings("FIT-1/flow", 5, start_ms=old + 100))
        after = [await uplink.exchange("backlog"), await uplink.exchange("backlog")]
        await uplink.aclose()
    # rand() is 0.5: half of min(60, 1 * 2**n).
    assert [o.delay for o in outcomes[:9]] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert outcomes[9].kind == "acked"
    assert [o.kind for o in after] == ["acked", "idle"]
    assert len({r.body for r in stub.received[:10]}) == 1  # one batch, resent unchanged
    assert uplink.status.state == "online"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b'{"acked_sequence": "one"}'),
        Reply(200, b"<html>proxy error</html>"),
        # Valid acknowledgements but for their size: only the cap refuses them.
        Reply(200, PADDED_ACK),
        Reply(200, PADDED_ACK, length=False),
        Reply(200, ack_body(1), delay=3.0),
    ],
    ids=["malformed-ack", "not-json", "oversized", "oversized-unannounced", "slow"],
)
@sync
async def test_an_unusable_answer_is_an_error_and_the_batch_stays(
    reply: Reply, tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    buffer.append(readings("FIT-1/flow", 5, start_ms=now_ms() - HOUR_MS))
    fake = FakeTime()
    with StubCloud(stub_pki[1], stub_pki[2], scripted(reply)) as stub:
        uplink = stub_uplink(stub, stub_pki, stub_credential, buffer, fake, timeout=1.0)
        outcome = await uplink.exchange("backlog")
        (kept,) = buffer.formed()
        again = await uplink.exchange("backlog")
        await uplink.aclose()
    assert outcome.kind == "retry"
    assert outcome.delay > 0
    assert uplink.status.state == "online"  # the resend succeeded
    assert again == Outcome("acked", 0.0, kept.sequence)
    assert stub.received[0].body == stub.received[1].body
    assert buffer.stats().depth == 0


@sync
async def test_batches_are_gzip_with_the_bearer_credential(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    buffer.append(readings("FIT-1/flow", 3, start_ms=now_ms() - 10))
    fake = FakeTime()
    with StubCloud(stub_pki[1], stub_pki[2], scripted()) as stub:
        uplink = stub_uplink(stub, stub_pki, stub_credential, buffer, fake)
        assert (await uplink.exchange("live")).kind == "acked"
        await uplink.aclose()
    (got,) = stub.received
    assert got.headers["content-encoding"] == "gzip"
    assert got.headers["authorization"] == "Bearer " + STUB_TOKEN
    assert got.batch["backlog"] is False
    assert [v[2] for v in got.batch["values"]] == [0.0, 1.0, 2.0]
    assert got.batch["status"]["buffer_values"] == 3


@sync
async def test_two_lanes_send_concurrently_and_a_slow_backlog_does_not_hold_live(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    now = now_ms()
    buffer.append(readings("FIT-1/flow", 5, start_ms=now - HOUR_MS))
    buffer.append(readings("FIT-1/flow", 5, start_ms=now - 100, first=100))

    def answer(got: Received) -> Reply:
        slow = got.batch["backlog"]
        return Reply(200, ack_body(0), delay=1.0 if slow else 0.0)

    live_done_at: list[float] = []
    backlog_done_at: list[float] = []
    with StubCloud(stub_pki[1], stub_pki[2], answer) as stub:
        uplink = Uplink(
            f"https://127.0.0.1:{stub.port}",
            ca_file=stub_pki[0],
            credential_file=stub_credential,
            buffer=buffer,
        )

        async def lane(name: str, out: list[float]) -> None:
            assert (await uplink.exchange(name)).kind == "acked"  # type: ignore[arg-type]
            out.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(lane("backlog", backlog_done_at), lane("live", live_done_at))
        await uplink.aclose()
    assert live_done_at[0] - started < 0.8 <= backlog_done_at[0] - started
    assert buffer.stats().depth == 0


@sync
async def test_swapping_the_credential_resumes_after_a_refusal(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    buffer = Buffer(tmp_path / "b.sqlite")
    buffer.append(readings("FIT-1/flow", 3, start_ms=now_ms() - HOUR_MS))
    fake = FakeTime()
    refused = Reply(401, b'{"code": "device_credential_invalid", "message": "no"}')
    rotated = register_canary("fld_" + "n" * 43)
    with StubCloud(stub_pki[1], stub_pki[2], scripted(refused)) as stub:
        uplink = stub_uplink(stub, stub_pki, stub_credential, buffer, fake)
        outcomes = [await uplink.exchange("backlog"), await uplink.exchange("backlog")]
        uplink.swap_credential(rotated)
        outcomes.append(await uplink.exchange("backlog"))
        await uplink.aclose()
    buffer.close()
    assert [o.kind for o in outcomes] == ["unauthorized", "unauthorized", "acked"]
    assert len(stub.received) == 2  # nothing was sent while the credential was refused
    assert stub.received[1].headers["authorization"] == "Bearer " + rotated
