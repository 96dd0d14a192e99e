"""Persistent state of the audit context.

Rows are written only by ``fieldlink.audit.services.record``. The model and its QuerySet refuse
every change to an existing row; on PostgreSQL a trigger (migration 0001) refuses it in the
database as well. What neither can stop, someone with direct write access to the database, the
hash chain makes visible (``services.verify``).
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, NoReturn

from django.db import models

from fieldlink.audit.errors import AuditImmutableError

PLATFORM_CHAIN = "platform"
GENESIS_HASH = "0" * 64


class ActorType(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    DEVICE = "device", "Device"
    STAFF = "staff", "Staff"
    SYSTEM = "system", "System"


def _refuse(what: str) -> NoReturn:
    raise AuditImmutableError(f"audit entries are append-only: {what} refused")


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    # Bulk paths skip Model.save/delete, so they are closed here too. Inserting in bulk is
    # refused because only record() computes the chain links.
    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        # Refused before Django opens its own atomic block, so the caller's transaction stays
        # usable after the error.
        _refuse("bulk_update")

    def delete(self) -> NoReturn:
        _refuse("delete")

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("bulk_create (use fieldlink.audit.services.record)")


class AuditEntry(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Text, not a foreign key: entries must outlive the organisation they describe (its deletion
    # is itself audited), and the platform chain has no organisation at all.
    chain = models.CharField(max_length=64)
    sequence = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64)
    actor_label = models.CharField(max_length=320, blank=True)
    on_behalf_of_grant = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    # Text rather than GenericIPAddressField: the hash covers the value exactly as stored, and
    # PostgreSQL's inet type would hand back its own rendering of an address.
    ip = models.CharField(max_length=45, blank=True)
    client = models.CharField(max_length=300, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects: ClassVar[models.Manager[AuditEntry]] = AuditEntryQuerySet.as_manager()
    # Each organisation's entries form the chain named by its id (fieldlink.accounts.access).
    organisation_lookup: ClassVar[str] = "chain"

    class Meta:
        ordering: ClassVar[list[str]] = ["chain", "sequence"]
        verbose_name_plural = "audit entries"
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["chain", "sequence"], name="audit_chain_sequence"),
            models.CheckConstraint(
                condition=models.Q(sequence__gte=1), name="audit_sequence_positive"
            ),
        ]
        indexes: ClassVar[list[models.Index]] = [
            # verify() looks entries up by their links when it classifies a broken chain.
            models.Index(fields=["chain", "hash"], name="audit_chain_hash"),
            models.Index(fields=["chain", "prev_hash"], name="audit_chain_prev_hash"),
            models.Index(fields=["chain", "-created_at"], name="audit_chain_time"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.sequence} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding or kwargs.get("force_update") or kwargs.get("update_fields"):
            _refuse("update")
        # An INSERT, never Django's UPDATE-then-INSERT, whatever the primary key holds.
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("delete")
