"""Edge buffer benchmark: append and drain a million readings, against raw sqlite3 in the same run.

Measured in one process, on the same disk, with the same rows (200 points of one plant, one
value per point per poll cycle):

  raw     ``executemany`` of all rows into a bare table in one transaction (WAL, synchronous=FULL):
          the ceiling for getting rows into SQLite at all.
  append  ``Buffer.append`` one poll cycle per call, ``--cycle`` readings each, one fsynced commit
          per call (the durability policy), and once with a single call for all rows.
  drain   the backlog path: ``next_batch`` (select, encode, store the batch, delete the values,
          commit) → ``ack`` (delete the batch, commit), ``--batch`` values per batch, until empty.

Ratios drain/raw and append/raw are printed. No network, nothing else running.

    .venv/bin/python bench/edge_buffer.py [--rows 1000000] [--cycle 1000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fieldlink.edge.buffer import Buffer
from fieldlink.edge.model import Reading
from fieldlink.protocol.telemetry import Ack

ACK = Ack(
    acked_sequence=0,
    accepted=True,
    duplicate=False,
    desired_config_version=0,
    update_available=None,
    rotate_credential=False,
)


def make_rows(n: int, start_ms: int) -> list[Reading]:
    points = [f"FIT-{i // 4:03d}/p{i % 4}" for i in range(200)]
    return [
        Reading(points[i % 200], start_ms + (i // 200) * 1000, 20.0 + (i % 997) * 0.01, 192)
        for i in range(n)
    ]


def timed(label: str, n: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    rate = n / seconds
    print(f"{label:<44} {seconds:8.2f} s  {rate:>12,.0f} values/s")
    return rate


def raw_insert(path: Path, rows: list[Reading]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, point TEXT, ts INTEGER, value REAL, quality INT)"
    )
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (point, ts, value, quality) VALUES (?, ?, ?, ?)", rows)
    db.execute("COMMIT")
    db.close()


def append_cycles(buffer: Buffer, rows: list[Reading], cycle: int) -> None:
    for i in range(0, len(rows), cycle):
        buffer.append(rows[i : i + cycle])


def drain(buffer: Buffer) -> int:
    batches = 0
    while (batch := buffer.next_batch("backlog")) is not None:
        buffer.ack(ACK, batch.sequence)
        batches += 1
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cycle", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {platform.machine()}")
    start_ms = time.time_ns() // 1_000_000 - 30 * 86_400_000  # all backlog
    rows = make_rows(args.rows, start_ms)
    n = len(rows)
    with tempfile.TemporaryDirectory(prefix="edge-buffer-bench-") as tmp:
        directory = Path(tmp)
        raw = timed(
            "raw executemany, one transaction", n, lambda: raw_insert(directory / "raw", rows)
        )

        with Buffer(directory / "one.sqlite", batch_values=args.batch) as one:
            single = timed("Buffer.append, one call", n, lambda: one.append(rows))

        with Buffer(directory / "buffer.sqlite", batch_values=args.batch) as buffer:
            cycles = timed(
                f"Buffer.append, {args.cycle} per call (commit each)",
                n,
                lambda: append_cycles(buffer, rows, args.cycle),
            )
            stats = buffer.stats()
            print(f"  depth {stats.depth:,}, file {stats.file_bytes / 1e6:.1f} MB")
            drained = timed(
                f"drain: next_batch → ack, {args.batch} per batch", n, lambda: drain(buffer)
            )
            assert buffer.stats().depth == 0
    print()
    print(f"append (one call) / raw   {single / raw:6.1%}")
    print(f"append (per cycle) / raw  {cycles / raw:6.1%}")
    print(f"drain / raw               {drained / raw:6.1%}   (aim: >= 30 %)")


if __name__ == "__main__":
    main()
