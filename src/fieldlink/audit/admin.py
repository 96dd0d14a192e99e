"""Django admin registrations of the audit context."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from fieldlink.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin[AuditEntry]):
    # Read-only: the trail is written by services.record alone and never edited.
    list_display = ("chain", "sequence", "created_at", "actor_label", "action")
    list_filter = ("actor_type", "action")
    search_fields = ("chain", "action", "actor_label", "target_id")
    ordering = ("chain", "-sequence")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
