"""Use cases of the audit context: the only place that changes its state.

Each chain (one per organisation, plus ``"platform"``) is a sequence 1, 2, 3, ... where every
entry stores the SHA-256 of its predecessor (``prev_hash``; 64 zeros for the first) and its own
``hash`` over a canonical JSON of all its other fields. Changing, removing or moving a row
without rewriting every later one breaks a hash or a link, which ``verify`` names.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
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
    "EXPORT_FIELDS",
    "EXPORT_LIMIT",
    "PAGE_SIZE_DEFAULT",
    "PAGE_SIZE_MAX",
    "SEQUENCE_MAX",
    "AuditFilters",
    "AuditPage",
    "Change",
    "ExportPlan",
    "Finding",
    "FindingKind",
    "Verification",
    "as_utc",
    "changes",
    "check_filter_text",
    "csv_cell",
    "entry_hash",
    "export_csv",
    "export_json",
    "exported",
    "filter_entries",
    "plan_export",
    "record",
    "search",
    "verify",
    "verify_entries",
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
    return verify_entries(entries)


def verify_entries(entries: models.QuerySet[AuditEntry]) -> Verification:
    """``verify_report`` over a queryset of whole chains, e.g. one organisation's scoped entries.

    Narrowing it any further (by time, action, ...) would make the left-out entries look deleted.
    """
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


# --- reading: search, export, changes ------------------------------------------------------------
#
# Every function here takes a queryset the caller has already narrowed to one organisation
# (``fieldlink.accounts.access.Scope.filter``), so this module knows nothing of tenants.

PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
EXPORT_LIMIT: Final = 100_000
SEQUENCE_MAX: Final = 2**63 - 1  # a bigint column; a larger cursor is refused, not a 500
# A filter longer than the column it is compared with could never match; refusing it says why.
FILTER_MAX_LENGTH: Final = {
    "action": 100,
    "actor": 320,
    "target_type": 64,
    "target_id": 64,
}
# Control characters match nothing that is stored, and PostgreSQL refuses NUL in a parameter.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ACTION = re.compile(r"[A-Za-z0-9_.:-]*")

# Columns of an export: every hashed field plus the hash, so that anyone can re-check the chain
# offline with ``entry_hash`` (after parsing ``before``/``after`` from their JSON text in CSV).
EXPORT_FIELDS: Final = (
    "sequence",
    "created_at",
    "id",
    "chain",
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
    "hash",
)
# Spreadsheets run a cell starting with one of these as a formula. Such cells get a leading
# apostrophe; so does a cell that starts with an apostrophe itself, which keeps the escape
# reversible: a reader drops exactly one leading apostrophe, if there is one.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r", "'")


def check_filter_text(name: str, value: str) -> str:
    """``value`` of the text filter ``name``, or ValueError saying what is wrong with it."""
    limit = FILTER_MAX_LENGTH[name]
    if len(value) > limit:
        raise ValueError(f"at most {limit} characters")
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    if name == "action" and not _ACTION.fullmatch(value):
        raise ValueError("letters, digits and . _ : - only (end with '.' for a prefix)")
    return value


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+05:00
        raise ValueError("out of range") from exc


@dataclass(frozen=True, slots=True)
class AuditFilters:
    action: str = ""  # exact, or a prefix when it ends with "." ("member." → member.*)
    actor: str = ""  # part of the actor's label (e-mail), or exactly the actor's id
    target_type: str = ""
    target_id: str = ""
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def active(self) -> dict[str, str]:
        """The filters that are set, as text (for links, and for the record of an export)."""
        values = {
            "action": self.action,
            "actor": self.actor,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "since": _canonical(self.since) if self.since else "",
            "until": _canonical(self.until) if self.until else "",
        }
        return {name: value for name, value in values.items() if value}


def filter_entries(
    entries: models.QuerySet[AuditEntry], filters: AuditFilters
) -> models.QuerySet[AuditEntry]:
    if filters.action.endswith("."):
        entries = entries.filter(action__startswith=filters.action)
    elif filters.action:
        entries = entries.filter(action=filters.action)
    if filters.actor:
        entries = entries.filter(
            models.Q(actor_label__icontains=filters.actor) | models.Q(actor_id=filters.actor)
        )
    if filters.target_type:
        entries = entries.filter(target_type=filters.target_type)
    if filters.target_id:
        entries = entries.filter(target_id=filters.target_id)
    if filters.since is not None:
        entries = entries.filter(created_at__gte=filters.since)
    if filters.until is not None:
        entries = entries.filter(created_at__lt=filters.until)
    return entries


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    # Pass as ``before_sequence`` for the next (older) page; None on the last page.
    next_before_sequence: int | None


def search(
    entries: models.QuerySet[AuditEntry],
    filters: AuditFilters,
    *,
    before_sequence: int | None = None,
    limit: int = PAGE_SIZE_DEFAULT,
) -> AuditPage:
    """One page of matching entries, newest first, paged by sequence (stable while appending)."""
    if not 1 <= limit <= PAGE_SIZE_MAX:
        raise AuditValueError(f"limit must be 1 to {PAGE_SIZE_MAX}")
    matching = filter_entries(entries, filters)
    if before_sequence is not None:
        matching = matching.filter(sequence__lt=before_sequence)
    rows = list(matching.order_by("-sequence")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].sequence if more else None)


@dataclass(frozen=True, slots=True)
class ExportPlan:
    entries: models.QuerySet[AuditEntry]  # chain order, at most the limit
    count: int
    # The chain's head when the export was planned: entries appended later are not in it.
    up_to_sequence: int
    limit: int
    truncated: bool
    # When truncated: pass as ``since`` to export the rest (inclusive, so nothing is skipped).
    next_since: datetime | None

    def stream(self) -> Iterator[AuditEntry]:
        return self.entries.iterator(chunk_size=_CHUNK)


def plan_export(
    entries: models.QuerySet[AuditEntry], filters: AuditFilters, *, limit: int | None = None
) -> ExportPlan:
    """What an export of the matching entries will hold (in chain order, bounded)."""
    limit = EXPORT_LIMIT if limit is None else limit
    head = entries.aggregate(head=models.Max("sequence"))["head"] or 0
    matching = filter_entries(entries, filters).filter(sequence__lte=head).order_by("sequence")
    omitted = list(matching.values_list("created_at", flat=True)[limit : limit + 1])
    count = limit if omitted else matching.count()
    return ExportPlan(
        entries=matching[:limit],
        count=count,
        up_to_sequence=head,
        limit=limit,
        truncated=bool(omitted),
        next_since=omitted[0] if omitted else None,
    )


def exported(entry: AuditEntry) -> dict[str, Any]:
    """An entry as exported: the values its hash covers, in the form the hash was computed on."""
    return {name: _canonical(getattr(entry, name)) for name in EXPORT_FIELDS}


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def csv_cell(value: Any) -> str:
    """One CSV cell as text, with a formula start neutralised."""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class _Line:
    def write(self, value: str) -> str:
        return value


def export_csv(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """CSV lines (RFC 4180): a header, then one row per entry; ``before``/``after`` as JSON."""
    writer = csv.writer(_Line())
    yield writer.writerow(EXPORT_FIELDS)
    for entry in entries:
        row = exported(entry)
        row["before"], row["after"] = _json_text(row["before"]), _json_text(row["after"])
        yield writer.writerow([csv_cell(row[name]) for name in EXPORT_FIELDS])


def export_json(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """One JSON array of entry objects, produced piece by piece."""
    separator = "[\n"
    for entry in entries:
        yield separator + _json_text(exported(entry))
        separator = ",\n"
    yield "[]\n" if separator == "[\n" else "\n]\n"


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    before: str | None  # None: the field was absent
    after: str | None
    changed: bool


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else _json_text(value)


def changes(before: Any, after: Any) -> list[Change]:
    """Field by field what an entry's before/after say, for people reading the trail."""
    if isinstance(before, dict | None) and isinstance(after, dict | None):
        old, new = before or {}, after or {}
        return [
            Change(
                str(key),
                _shown(old[key]) if key in old else None,
                _shown(new[key]) if key in new else None,
                key not in old or key not in new or old[key] != new[key],
            )
            for key in sorted({*old, *new}, key=str)
        ]
    return [Change("value", _shown(before), _shown(after), before != after)]
