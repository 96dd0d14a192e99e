"""The clock, injectable: code asks ``utcnow()`` so tests can pass a fixed ``now`` instead."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
