"""The agent's durable store-and-forward buffer: every value is on disk before it is sent, and
leaves the disk only after the cloud has acknowledged the batch that carried it.

One SQLite file (stdlib ``sqlite3``), WAL mode, ``synchronous=FULL``, one transaction per call.

Durability policy
    ``append`` commits once per call (the poller calls it once per poll cycle, at least every
    second) and returns only after the WAL is fsynced. A process kill (``kill -9``) loses nothing
    that ``append`` returned for; a power loss loses at most the values of the cycle in flight
    (the ``append`` call that had not returned). Forming a batch, acknowledging it and reworking a
    refused one are single transactions too, so a crash leaves the state before or after.

Batches and exactly-once
    A batch is formed in one transaction: its values leave ``pending`` and are stored, encoded
    exactly as they will be sent, under a sequence number taken from a persisted counter. After a
    crash the same sequence is resent with the same bytes, which is what lets the cloud store each
    ``(device, sequence)`` once. The counter lives in ``meta`` and only grows: sequences are never
    reused, even when every batch has been acknowledged and deleted.

    ``ack(ack, sequence)`` deletes the batch whose sequence was accepted (or was a duplicate) and
    every batch at or below ``ack.acked_sequence`` (the cloud stored all of them).

    A duplicate answer to a batch's *first* attempt means the cloud holds that sequence from
    someone else: this buffer's counter restarted (a new buffer file, a restored disk image). The
    batch is renumbered above the cloud's ``acked_sequence`` instead of being deleted, so a lost
    buffer file never turns into silently dropped data. (Resending values the cloud already has
    is harmless: storage keeps one sample per series and timestamp.)

Lanes
    ``live``: values newer than ``live_window_ms``, newest first, so current values keep
    flowing during a catch-up; ``backlog``: everything else (older, or with a timestamp beyond
    the window after a clock step), oldest first, at full speed. There is no index on ``ts``
    (appends stay as cheap as a bare insert): each lane looks at a bounded window of rows in
    insertion order (the newest or oldest four batches' worth), so a lane never scans a
    million-row backlog. A live value the live lane's window misses becomes backlog within
    ``live_window_ms``; every value is in exactly one lane and is sent once.

Disk bound
    When the data pages exceed ``max_bytes``, the OLDEST UNSENT values are dropped (down to 90 %
    of the bound, so it does not happen on every cycle) and a gap ``(from_ts, to_ts, count,
    "buffer_full")`` is recorded; it travels with the next batch and is deleted only when that
    batch is acknowledged. Formed batches are never dropped: one of them may already be stored
    in the cloud, and dropping it would leave a hole in the sequence the cloud cannot close.
    There are at most a few (one per lane in flight, plus the halves of a split).

Values the cloud would refuse are not stored: the table's CHECK constraints mirror the
protocol's rules (finite, ``|v| <= 1e300``, ts after 2000 in integer ms, quality 0/64/192,
``"<tag>/<key>"`` ≤ 130 characters); such values are counted in a gap (``value_invalid``).

Refused batches (``refuse``): a batch the cloud will never accept would block its lane forever.
The cloud refuses a batch whole and stores nothing, so the same sequence may be resent with other
content. 413: the batch is split in two (the first half keeps the sequence). 422 naming a value:
that value (for ``point_unknown``: every value of that point; for a timestamp ahead of the cloud's
clock: every value at or after it) is moved to ``quarantine`` and reported as a gap with the
refusal code; the rest is resent under the same sequence. 422 naming nothing: all content is
quarantined and the sequence is resent empty with a gap, which keeps the cloud's acknowledged
sequence contiguous. Every step removes content, so this ends.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec

from fieldlink.edge.model import Reading
from fieldlink.protocol.telemetry import (
    MAX_ABS_VALUE,
    MAX_GAPS,
    MAX_HEALTH,
    MAX_POINT_CHARS,
    MAX_VALUES,
    MIN_TS_MS,
    QUALITIES,
    Ack,
    AgentStatus,
    Batch,
    Gap,
    HealthReport,
    Value,
)

__all__ = ["Buffer", "BufferStats", "FormedBatch", "HealthLike", "Lane", "Rework"]

Lane = Literal["live", "backlog"]

DEFAULT_MAX_BYTES: Final = 512 * 1024 * 1024
DEFAULT_LIVE_WINDOW_MS: Final = 30_000
QUARANTINE_MAX_ROWS: Final = 100_000
# Drop down to this share of max_bytes on overflow, so a full buffer drops in chunks.
_DROP_TARGET: Final = 0.9

_QUALITY_CHECK: Final = " OR ".join(f"quality = {q}" for q in sorted(QUALITIES, reverse=True))
# The CHECKs are written the way SQLite evaluates fastest (`IN (…)` costs a third of the insert
# rate); NaN arrives as NULL and fails NOT NULL.
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY,
    point TEXT NOT NULL CHECK (length(point) <= {MAX_POINT_CHARS} AND instr(point, '/') > 0),
    ts INTEGER NOT NULL CHECK (typeof(ts) = 'integer' AND ts >= {MIN_TS_MS}),
    value REAL NOT NULL CHECK (value BETWEEN -{MAX_ABS_VALUE!r} AND {MAX_ABS_VALUE!r}),
    quality INTEGER NOT NULL CHECK ({_QUALITY_CHECK})
);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY, asset TEXT NOT NULL, status TEXT NOT NULL, ts INTEGER NOT NULL,
    code TEXT NOT NULL, cause TEXT NOT NULL, remedy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY, from_ts INTEGER NOT NULL, to_ts INTEGER NOT NULL,
    count INTEGER NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    sequence INTEGER PRIMARY KEY,
    backlog INTEGER NOT NULL,
    value_count INTEGER NOT NULL,
    first_ts INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, sequence INTEGER NOT NULL, point TEXT NOT NULL, ts INTEGER NOT NULL,
    value REAL, quality INTEGER NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL
);
"""

_INSERT: Final = "INSERT INTO pending (point, ts, value, quality) VALUES (?, ?, ?, ?)"
_encoder: Final = msgspec.json.Encoder()
_batch_decoder: Final = msgspec.json.Decoder(Batch)


class HealthLike(Protocol):
    """An NE 107 status of an instrument (``model.HealthReading`` or ``HealthReport``)."""

    @property
    def asset(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def code(self) -> str: ...
    @property
    def cause(self) -> str: ...
    @property
    def remedy(self) -> str: ...


@dataclass(frozen=True)
class FormedBatch:
    """A batch as it is (re)sent: ``body`` is the same bytes on every attempt."""

    sequence: int
    backlog: bool
    values: int
    attempts: int  # including this one
    payload: bytes  # the JSON object after its "sequence" member

    @property
    def body(self) -> bytes:
        return b'{"sequence":%d,%s' % (self.sequence, self.payload)

    def decode(self) -> Batch:
        return _batch_decoder.decode(self.body)


@dataclass(frozen=True)
class BufferStats:
    depth: int  # values not yet acknowledged (unsent + in formed batches)
    unsent: int  # values not yet in a batch
    oldest_unsent_age_s: int
    dropped_total: int  # values dropped for space or refused before storing
    quarantined_total: int  # values the cloud refused, kept aside
    batches_in_flight: int  # formed, not yet acknowledged
    gaps_pending: int
    file_bytes: int  # database + WAL on disk
    data_bytes: int  # pages in use (what max_bytes bounds)


@dataclass(frozen=True)
class Rework:
    """What ``refuse`` did with a refused batch."""

    action: Literal["split", "quarantined", "emptied", "dropped", "unknown"]
    quarantined: int = 0
    new_sequence: int | None = None


def _payload(
    values: bytes | list[Value],
    health: Sequence[HealthReport],
    backlog: bool,
    gaps: Sequence[Gap],
    status: AgentStatus | None,
) -> bytes:
    raw = msgspec.Raw(values) if isinstance(values, bytes) else values
    doc: dict[str, Any] = {"values": raw, "health": health, "backlog": backlog, "gaps": gaps}
    if status is not None:
        doc["status"] = status
    return _encoder.encode(doc)[1:]  # without "{": the body is '{"sequence":N,' + payload


def _valid(reading: Reading) -> bool:
    point, ts, value, quality = reading
    return (
        isinstance(ts, int)
        and ts >= MIN_TS_MS
        and isinstance(value, int | float)
        and math.isfinite(value)
        and abs(value) <= MAX_ABS_VALUE
        and quality in QUALITIES
        and 0 < len(point) <= MAX_POINT_CHARS
        and "/" in point
    )


class Buffer:
    """The durable buffer; one instance per file, used from one thread (the event loop)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        live_window_ms: int = DEFAULT_LIVE_WINDOW_MS,
        batch_values: int = MAX_VALUES,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.live_window_ms = live_window_ms
        self.batch_values = batch_values
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Autocommit mode: every transaction below is an explicit BEGIN … COMMIT.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # The WAL is checkpointed back into the file and truncated to this size afterwards.
        self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._unsent = int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])

    # -- plumbing --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            # The in-memory count may have moved with the rolled-back statements.
            self._unsent = int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _add_meta(self, key: str, delta: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, delta),
        )

    def _take_sequence(self) -> int:
        sequence = self._meta("next_sequence") or 1
        self._set_meta("next_sequence", sequence + 1)
        return sequence

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _record_gap(self, from_ts: int, to_ts: int, count: int, reason: str) -> None:
        now = self._now_ms()
        from_ts = min(max(from_ts, MIN_TS_MS), now)
        to_ts = min(max(to_ts, from_ts), now)
        # Consecutive drops of the same kind are one stretch of time: one gap, not thousands.
        last = self._db.execute(
            "SELECT id, from_ts, to_ts FROM gaps WHERE reason = ? ORDER BY id DESC LIMIT 1",
            (reason,),
        ).fetchone()
        if last is not None:
            self._db.execute(
                "UPDATE gaps SET from_ts = ?, to_ts = ?, count = count + ? WHERE id = ?",
                (min(last[1], from_ts), max(last[2], to_ts), count, last[0]),
            )
        else:
            self._db.execute(
                "INSERT INTO gaps (from_ts, to_ts, count, reason) VALUES (?, ?, ?, ?)",
                (from_ts, to_ts, count, reason),
            )

    def _data_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    # -- writing ---------------------------------------------------------------------------------

    def append(self, readings: Sequence[Reading], health: Iterable[HealthLike] = ()) -> int:
        """Store one poll cycle durably (one commit); the number of values stored."""
        reports = [(h.asset, h.status, h.ts, h.code, h.cause, h.remedy) for h in health]
        with self._transaction():
            try:
                self._db.executemany(_INSERT, readings)
                stored = len(readings)
            except sqlite3.IntegrityError:
                # Rare (the poller sends what the protocol accepts): sort out the bad ones.
                self._db.execute("ROLLBACK")
                self._db.execute("BEGIN IMMEDIATE")
                good = [r for r in readings if _valid(r)]
                bad = [r for r in readings if not _valid(r)]
                self._db.executemany(_INSERT, good)
                stored = len(good)
                ts = [r.ts for r in bad if isinstance(r.ts, int)] or [self._now_ms()]
                self._record_gap(min(ts), max(ts), len(bad), "value_invalid")
                self._add_meta("dropped_total", len(bad))
            if reports:
                self._db.executemany(
                    "INSERT INTO health (asset, status, ts, code, cause, remedy) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    reports,
                )
            self._unsent += stored
            self._enforce_bound()
        return stored

    def _enforce_bound(self) -> None:
        for _ in range(8):
            used = self._data_bytes()
            if used <= self.max_bytes or self._unsent == 0:
                return
            in_batches = self._db.execute("SELECT total(value_count) FROM batches").fetchone()[0]
            per_value = used / max(1, self._unsent + int(in_batches))
            n = min(self._unsent, math.ceil((used - self.max_bytes * _DROP_TARGET) / per_value))
            last_id, first_ts, last_ts, count = self._db.execute(
                "SELECT max(id), min(ts), max(ts), count(*) FROM "
                "(SELECT id, ts FROM pending ORDER BY id LIMIT ?)",
                (max(1, n),),
            ).fetchone()
            self._db.execute("DELETE FROM pending WHERE id <= ?", (last_id,))
            self._unsent -= count
            self._record_gap(first_ts, last_ts, count, "buffer_full")
            self._add_meta("dropped_total", count)

    # -- sending ---------------------------------------------------------------------------------

    def next_batch(
        self, lane: Lane, *, exclude: Container[int] = (), status: AgentStatus | None = None
    ) -> FormedBatch | None:
        """The batch to send now on ``lane``: a formed one not yet acknowledged (oldest first,
        skipping ``exclude``, the sequences in flight), else a new one; None if nothing to send.

        ``status`` goes into a newly formed batch only (a resend is byte-identical).
        """
        backlog = lane == "backlog"
        with self._transaction():
            formed = self._db.execute(
                "SELECT sequence, backlog, value_count, attempts, payload FROM batches "
                "WHERE backlog = ? ORDER BY sequence",
                (backlog,),
            ).fetchall()
            for sequence, _, count, attempts, payload in formed:
                if sequence not in exclude:
                    self._db.execute(
                        "UPDATE batches SET attempts = attempts + 1 WHERE sequence = ?",
                        (sequence,),
                    )
                    return FormedBatch(sequence, backlog, count, attempts + 1, bytes(payload))
            if formed:
                return None  # one batch per lane in flight: the next one waits for its ack
            return self._form(backlog, status)

    def _lane_rows(self, backlog: bool) -> tuple[list[Any], str, tuple[int, ...]]:
        """The rows of the next batch of a lane, and the WHERE clause that deletes exactly them.

        Each lane looks at a bounded window of rows (the oldest or newest four batches' worth),
        so neither scans a million-row backlog per batch. Every row is in exactly one lane at a
        given time (a ts beyond the window, a clock step, counts as backlog), and a live row
        becomes backlog within ``live_window_ms``: nothing waits forever.
        """
        now = self._now_ms()
        low, high = now - self.live_window_ms, now + self.live_window_ms
        n = self.batch_values
        window = 4 * n
        if backlog:
            rows = self._db.execute(
                "SELECT id, point, ts, value, quality FROM "
                "(SELECT * FROM pending ORDER BY id LIMIT ?) "
                "WHERE ts < ? OR ts > ? ORDER BY id LIMIT ?",
                (window, low, high, n),
            ).fetchall()
            if not rows:
                return [], "", ()
            # The first n backlog rows by id: all backlog rows up to the last one taken.
            return rows, "id <= ? AND (ts < ? OR ts > ?)", (rows[-1][0], low, high)
        rows = self._db.execute(
            "SELECT id, point, ts, value, quality FROM "
            "(SELECT * FROM pending ORDER BY id DESC LIMIT ?) "
            "WHERE ts BETWEEN ? AND ? ORDER BY id DESC LIMIT ?",
            (window, low, high, n),
        ).fetchall()
        if not rows:
            return [], "", ()
        rows.reverse()
        # The newest n live rows: all live rows from the oldest one taken on.
        return rows, "id >= ? AND ts BETWEEN ? AND ?", (rows[0][0], low, high)

    def _form(self, backlog: bool, status: AgentStatus | None) -> FormedBatch | None:
        db = self._db
        rows, where, args = self._lane_rows(backlog)
        health_rows = db.execute(
            "SELECT id, asset, status, ts, code, cause, remedy FROM health ORDER BY id LIMIT ?",
            (MAX_HEALTH,),
        ).fetchall()
        gap_rows = db.execute(
            "SELECT id, from_ts, to_ts, count, reason FROM gaps ORDER BY id LIMIT ?",
            (MAX_GAPS,),
        ).fetchall()
        # A backlog batch is formed only for values; health and gaps ride on either lane.
        if not rows and (backlog or not (health_rows or gap_rows)):
            return None
        values = _encoder.encode([r[1:] for r in rows])
        first_ts = min((r[2] for r in rows), default=None)
        health = [HealthReport(*h[1:]) for h in health_rows]
        gaps = [Gap(*g[1:]) for g in gap_rows]
        payload = _payload(values, health, backlog, gaps, status)
        sequence = self._take_sequence()
        db.execute(
            "INSERT INTO batches (sequence, backlog, value_count, first_ts, attempts, payload) "
            "VALUES (?, ?, ?, ?, 1, ?)",
            (sequence, backlog, len(rows), first_ts, payload),
        )
        if rows:
            deleted = db.execute(f"DELETE FROM pending WHERE {where}", args).rowcount  # noqa: S608
            if deleted != len(rows):  # the invariant every exactly-once promise rests on
                raise RuntimeError(f"batch of {len(rows)} values would delete {deleted} rows")
            self._unsent -= len(rows)
        if health_rows:
            db.execute("DELETE FROM health WHERE id <= ?", (health_rows[-1][0],))
        if gap_rows:
            db.execute("DELETE FROM gaps WHERE id <= ?", (gap_rows[-1][0],))
        return FormedBatch(sequence, backlog, len(rows), 1, payload)

    # -- answers ---------------------------------------------------------------------------------

    def ack(self, ack: Ack, sequence: int) -> int:
        """Apply the cloud's ``Ack`` for ``sequence``; the number of batches deleted."""
        with self._transaction():
            next_sequence = self._meta("next_sequence") or 1
            if ack.acked_sequence >= next_sequence:
                # Sequences this buffer never formed are stored: skip past them for good.
                self._set_meta("next_sequence", ack.acked_sequence + 1)
            if ack.duplicate:
                row = self._db.execute(
                    "SELECT attempts FROM batches WHERE sequence = ?", (sequence,)
                ).fetchone()
                if row is not None and row[0] <= 1:
                    self._renumber(sequence)
                    return 0
            deleted = 0
            if ack.accepted or ack.duplicate:
                deleted += self._db.execute(
                    "DELETE FROM batches WHERE sequence = ?", (sequence,)
                ).rowcount
            deleted += self._db.execute(
                "DELETE FROM batches WHERE sequence <= ?", (ack.acked_sequence,)
            ).rowcount
            return deleted

    def _renumber(self, sequence: int) -> None:
        """A first attempt answered "duplicate": the sequence was stored by another buffer."""
        new = self._take_sequence()
        # attempts = 0: the renumbered batch's own first attempt is still to come.
        self._db.execute(
            "UPDATE batches SET sequence = ?, attempts = 0 WHERE sequence = ?", (new, sequence)
        )
        self._add_meta("renumbered_total", 1)

    def refuse(
        self, sequence: int, *, status: int, code: str, message: str, index: int | None
    ) -> Rework:
        """Rework a batch the cloud refused with 413/422 so its lane moves on (module doc)."""
        with self._transaction():
            row = self._db.execute(
                "SELECT payload, backlog FROM batches WHERE sequence = ?", (sequence,)
            ).fetchone()
            if row is None:
                return Rework("unknown")
            batch = FormedBatch(sequence, bool(row[1]), 0, 0, bytes(row[0])).decode()
            if status == 413:
                return self._split(batch, code)
            return self._cut(batch, code, message, index)

    def _store(self, batch: Batch, *, attempts: int = 0) -> None:
        payload = _payload(batch.values, batch.health, batch.backlog, batch.gaps, batch.status)
        first_ts = min((v.ts for v in batch.values), default=None)
        self._db.execute(
            "INSERT OR REPLACE INTO batches "
            "(sequence, backlog, value_count, first_ts, attempts, payload) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (batch.sequence, batch.backlog, len(batch.values), first_ts, attempts, payload),
        )

    def _split(self, batch: Batch, code: str) -> Rework:
        values, health = batch.values, batch.health
        if len(values) > 1 or len(health) > 1:
            half_v, half_h = len(values) // 2, len(health) // 2
            first = msgspec.structs.replace(batch, values=values[:half_v], health=health[:half_h])
            second = Batch(
                sequence=self._take_sequence(),
                values=values[half_v:],
                health=health[half_h:],
                backlog=batch.backlog,
            )
            self._store(first)
            self._store(second)
            return Rework("split", new_sequence=second.sequence)
        return self._quarantine_all(batch, code, "too large")

    def _cut(self, batch: Batch, code: str, message: str, index: int | None) -> Rework:
        values = batch.values
        if index is not None and message.startswith("values[") and 0 <= index < len(values):
            bad = values[index]
            refused: list[Value]
            if code == "point_unknown":
                refused = [v for v in values if v.point == bad.point]
            elif "ts must" in message:
                # Ahead of the cloud's clock: every later value would be refused one by one.
                refused = [v for v in values if v.ts >= bad.ts]
            else:
                refused = [bad]
            out = {id(v) for v in refused}
            kept = [v for v in values if id(v) not in out]
            self._quarantine(batch.sequence, refused, code, message)
            gaps = self._with_gap(batch.gaps, refused, code)
            self._store(msgspec.structs.replace(batch, values=kept, gaps=gaps))
            return Rework("quarantined", quarantined=len(refused))
        if index is not None and message.startswith("health[") and 0 <= index < len(batch.health):
            health = batch.health[:index] + batch.health[index + 1 :]
            self._add_meta("health_refused_total", 1)
            self._store(msgspec.structs.replace(batch, health=health))
            return Rework("quarantined")
        if code == "status_invalid" and batch.status is not None:
            self._store(msgspec.structs.replace(batch, status=None))
            return Rework("quarantined")
        return self._quarantine_all(batch, code, message)

    def _quarantine_all(self, batch: Batch, code: str, message: str) -> Rework:
        bare = Batch(sequence=batch.sequence, backlog=batch.backlog)
        if batch == bare:
            # Nothing left to take out; the cloud will never store this sequence.
            self._db.execute("DELETE FROM batches WHERE sequence = ?", (batch.sequence,))
            return Rework("dropped")
        self._quarantine(batch.sequence, batch.values, code, message)
        self._add_meta("health_refused_total", len(batch.health))
        refused_gaps = code.startswith("gap") or not batch.values
        gaps = [] if refused_gaps else self._with_gap([], batch.values, code)
        self._store(msgspec.structs.replace(bare, gaps=gaps))
        return Rework("emptied", quarantined=len(batch.values))

    def _quarantine(self, sequence: int, values: Sequence[Value], code: str, reason: str) -> None:
        self._db.executemany(
            "INSERT INTO quarantine (sequence, point, ts, value, quality, code, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (sequence, v.point, v.ts, v.value, v.quality, code[:64], reason[:300])
                for v in values
            ],
        )
        self._add_meta("quarantined_total", len(values))
        self._db.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?",
            (QUARANTINE_MAX_ROWS,),
        )

    def _with_gap(self, gaps: Sequence[Gap], values: Sequence[Value], code: str) -> list[Gap]:
        if not values:
            return list(gaps)
        now = self._now_ms()
        stamps = [v.ts for v in values]
        low = min(max(min(stamps), MIN_TS_MS), now)
        high = min(max(*stamps, low), now)
        gap = Gap(from_ts=low, to_ts=high, count=len(values), reason=code[:32])
        return [*gaps[: MAX_GAPS - 1], gap]

    # -- looking -------------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        db = self._db
        in_flight, in_batches, batch_first = db.execute(
            "SELECT count(*), total(value_count), min(first_ts) FROM batches"
        ).fetchone()
        first = db.execute("SELECT ts FROM pending ORDER BY id LIMIT 1").fetchone()
        known = [int(t) for t in (batch_first, first[0] if first else None) if t is not None]
        age = max(0, (self._now_ms() - min(known)) // 1000) if known else 0
        gaps = db.execute("SELECT count(*) FROM gaps").fetchone()[0]
        wal = self.path.with_name(self.path.name + "-wal")
        size = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return BufferStats(
            depth=self._unsent + int(in_batches),
            unsent=self._unsent,
            oldest_unsent_age_s=int(age),
            dropped_total=self._meta("dropped_total"),
            quarantined_total=self._meta("quarantined_total"),
            batches_in_flight=int(in_flight),
            gaps_pending=int(gaps),
            file_bytes=size,
            data_bytes=self._data_bytes(),
        )

    def formed(self) -> list[FormedBatch]:
        """The formed, unacknowledged batches (oldest first), without counting an attempt."""
        rows = self._db.execute(
            "SELECT sequence, backlog, value_count, attempts, payload FROM batches "
            "ORDER BY sequence"
        ).fetchall()
        return [FormedBatch(s, bool(b), n, a, bytes(p)) for s, b, n, a, p in rows]

    def unsent(self, limit: int = -1) -> list[Reading]:
        rows = self._db.execute(
            "SELECT point, ts, value, quality FROM pending ORDER BY id LIMIT ?", (limit,)
        )
        return [Reading(*r) for r in rows]

    def gaps(self) -> list[Gap]:
        rows = self._db.execute("SELECT from_ts, to_ts, count, reason FROM gaps ORDER BY id")
        return [Gap(*r) for r in rows]

    def quarantined(self) -> list[tuple[int, Value, str]]:
        rows = self._db.execute(
            "SELECT sequence, point, ts, value, quality, code FROM quarantine ORDER BY id"
        )
        return [(s, Value(p, t, v, q), c) for s, p, t, v, q, c in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
