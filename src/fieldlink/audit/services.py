"""Use cases of the audit context: the only place that changes its state.

Each chain (one per organisation, plus ``"platform"``) is a sequence 1, 2, 3, ... where every
entry stores the SHA-256 of its predecessor (``prev_hash``; 64 zeros for the first) and its own
``hash`` over a canonical JSON of all its other fields. Changing, removing or moving a row
without rewriting every later one breaks a hash or a link, which ``verify`` names.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models

from fieldlink.audit.errors import AuditOutsideTransactionError, AuditValueError
from fieldlink.audit.models import GENESIS_HASH, ActorType, AuditEntry
from fieldlink.kit.clock import utcnow
from fieldlink.kit.redaction import redact

__all__ = [
    "Finding",
    "FindingKind",
    "Verification",
    "entry_hash",
    "record",
    "verify",
    "verify_report",
]

# Every stored field except ``hash`` itself.
HASHED_FIELDS: Final = (
    "id",
    "chain",
    "sequence",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "on_behalf_of_grant",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
    "ip",
    "client",
    "prev_hash",
)

_CHUNK: Final = 2000


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def entry_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``HASHED_FIELDS`` taken from ``fields``."""
    payload = {name: _canonical(fields[name]) for name in HASHED_FIELDS}
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _row_hash(entry: AuditEntry, **override: Any) -> str:
    fields = {name: getattr(entry, name) for name in HASHED_FIELDS}
    fields.update(override)
    return entry_hash(fields)


def _stored_json(value: object) -> Any:
    # Redacted first, then taken through JSON once: the hash must be computed over exactly what
    # the database will hand back (tuples become lists, datetimes text, keys strings).
    if value is None:
        return None
    try:
        return json.loads(json.dumps(redact(value), cls=DjangoJSONEncoder, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AuditValueError("before/after must be JSON-serialisable") from exc


def _stored_ip(ip: str | None) -> str:
    if not ip:
        return ""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError as exc:
        raise AuditValueError("ip is not an IP address") from exc


def _lock_chain(chain: str) -> None:
    if connection.vendor == "postgresql":
        # SELECT ... FOR UPDATE on the newest row does not serialise appends under READ
        # COMMITTED: a waiter gets the same (now old) head back once the lock is released, and an
        # empty chain has no row to lock. A transaction-scoped advisory lock per chain does both.
        key = int.from_bytes(
            hashlib.sha256(b"fieldlink.audit:" + chain.encode()).digest()[:8], "big", signed=True
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
    # SQLite: the settings open every transaction with BEGIN IMMEDIATE, so the caller's
    # transaction already holds the database's one write lock.


def record(
    chain: str,
    *,
    action: str,
    actor_type: str,
    actor_id: str,
    actor_label: str = "",
    target_type: str = "",
    target_id: str = "",
    before: object = None,
    after: object = None,
    ip: str | None = None,
    client: str = "",
    on_behalf_of_grant: str = "",
) -> AuditEntry:
    """Append one entry to ``chain`` inside the caller's transaction and return it."""
    if not connection.in_atomic_block:
        # The entry must commit or roll back with the change it records; the boundary (request,
        # command, task) owns that transaction.
        raise AuditOutsideTransactionError("audit.record must run inside the caller's transaction")
    if actor_type not in ActorType.values:
        raise AuditValueError(f"unknown actor type {actor_type!r}")
    entry = AuditEntry(
        chain=chain,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        on_behalf_of_grant=on_behalf_of_grant,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=_stored_json(before),
        after=_stored_json(after),
        ip=_stored_ip(ip),
        client=client[:300],
    )
    _check_lengths(entry)
    _lock_chain(chain)
    head = (
        AuditEntry.objects.filter(chain=chain)
        .order_by("-sequence")
        .only("sequence", "hash", "created_at")
        .first()
    )
    now = utcnow()
    if head is None:
        entry.sequence, entry.prev_hash, entry.created_at = 1, GENESIS_HASH, now
    else:
        entry.sequence, entry.prev_hash = head.sequence + 1, head.hash
        # Replicas' clocks differ a little; clamping keeps time order equal to chain order, so a
        # timestamp running backwards in a chain is always a sign of tampering.
        entry.created_at = max(now, head.created_at)
    entry.created_at = entry.created_at.astimezone(UTC)
    entry.hash = _row_hash(entry)
    entry.save()
    return entry


def _check_lengths(entry: AuditEntry) -> None:
    # SQLite would store an over-long value that PostgreSQL refuses; refuse it on both.
    for f in entry._meta.concrete_fields:
        if isinstance(f, models.CharField) and f.max_length is not None:
            value = getattr(entry, f.attname)
            if isinstance(value, str) and len(value) > f.max_length:
                raise AuditValueError(f"{f.name} is longer than {f.max_length} characters")


# --- verification --------------------------------------------------------------------------------

FindingKind = Literal["altered", "deleted", "reordered"]


@dataclass(frozen=True, slots=True)
class Finding:
    chain: str
    # The position that is wrong. For "deleted" it is the first missing position and
    # ``entry_id`` names the entry that follows the gap (the deleted one is gone).
    sequence: int
    entry_id: str
    kind: FindingKind
    detail: str

    def __str__(self) -> str:
        return (
            f"chain {self.chain} #{self.sequence} entry {self.entry_id}: {self.kind}"
            f" ({self.detail})"
        )


@dataclass(slots=True)
class Verification:
    entries: int = 0
    chains: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings


def _original_sequence(entry: AuditEntry) -> int | None:
    """The position an entry was recorded at, if it is intact except for its sequence."""
    candidates: set[int] = set()
    if entry.prev_hash == GENESIS_HASH:
        candidates.add(1)
    chain = AuditEntry.objects.filter(chain=entry.chain)
    before = chain.filter(hash=entry.prev_hash).exclude(pk=entry.pk).values_list("sequence")
    after = chain.filter(prev_hash=entry.hash).exclude(pk=entry.pk).values_list("sequence")
    candidates.update(seq + 1 for (seq,) in before[:4])
    candidates.update(seq - 1 for (seq,) in after[:4] if seq > 1)
    candidates.discard(entry.sequence)
    for candidate in sorted(candidates):
        if _row_hash(entry, sequence=candidate) == entry.hash:
            return candidate
    return None


def _check_chain(entries: Iterator[AuditEntry], report: Verification) -> None:
    expected, last, last_flagged = 1, None, False
    for entry in entries:
        report.entries += 1
        found: list[Finding] = []

        def note(
            kind: FindingKind,
            detail: str,
            *,
            at: AuditEntry = entry,
            seq: int = 0,
            found: list[Finding] = found,
        ) -> None:
            found.append(Finding(at.chain, seq or at.sequence, str(at.pk), kind, detail))

        if _row_hash(entry) != entry.hash:
            original = _original_sequence(entry)
            if original is None:
                note("altered", "its content does not match its hash")
            else:
                note("reordered", f"recorded as #{original}, now at #{entry.sequence}")
        if entry.sequence > expected:
            missing = (
                f"#{expected}"
                if entry.sequence == expected + 1
                else f"#{expected}-#{entry.sequence - 1}"
            )
            note("deleted", f"{missing} missing before #{entry.sequence}", seq=expected)
        elif not found and not last_flagged:
            expected_prev = GENESIS_HASH if last is None else last.hash
            if entry.prev_hash != expected_prev:
                linked = (
                    AuditEntry.objects.filter(chain=entry.chain, hash=entry.prev_hash)
                    .exclude(pk=entry.pk)
                    .values_list("sequence", flat=True)
                    .first()
                )
                if linked is not None:
                    note("reordered", f"links to #{linked}, not to the entry before it")
                elif last is not None:
                    # The predecessor passes its own check, so it was rewritten with a fresh
                    # hash: the hash its successor recorded is the older truth.
                    note(
                        "altered",
                        f"its hash differs from the one #{entry.sequence} recorded",
                        at=last,
                    )
                else:
                    note("deleted", "the entry it links to is missing")
            elif last is not None and entry.created_at < last.created_at:
                note("reordered", "it is older than the entry before it")
        report.findings += found
        last_flagged = bool(found)
        expected, last = entry.sequence + 1, entry


def verify_report(chain: str | None = None) -> Verification:
    """Re-check every chain (or one) from its first entry; counts what was seen."""
    entries = AuditEntry.objects.all()
    if chain is not None:
        entries = entries.filter(chain=chain)
    # Streamed: a chain holds years of entries, only the previous one is kept in memory.
    stream = entries.order_by("chain", "sequence").iterator(chunk_size=_CHUNK)
    report = Verification()
    for _, group in itertools.groupby(stream, key=lambda e: e.chain):
        report.chains += 1
        _check_chain(group, report)
    return report


def verify(chain: str | None = None) -> list[Finding]:
    """What is wrong with the stored trail: altered, deleted or reordered entries, each named."""
    return verify_report(chain).findings
