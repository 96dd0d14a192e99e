"""Django admin registrations of the updates context.

Read-only: releases, rollouts and TUF metadata change only through ``services`` and
``repository``, which verify, sign and audit; signed bytes are not shown.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from fieldlink.updates.models import Release, Rollout, TufMetadata


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(_ReadOnly, admin.ModelAdmin[Release]):
    list_display = ("version", "allow_downgrade", "length", "published_at", "published_by")


@admin.register(Rollout)
class RolloutAdmin(_ReadOnly, admin.ModelAdmin[Rollout]):
    list_display = ("id", "release", "state", "current_wave", "created_at")
    list_filter = ("state",)


@admin.register(TufMetadata)
class TufMetadataAdmin(_ReadOnly, admin.ModelAdmin[TufMetadata]):
    list_display = ("role", "version", "created_at")
    list_filter = ("role",)
    exclude = ("data",)
