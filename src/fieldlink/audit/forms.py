"""The filter form of the audit trail page (the same rules as the API's query parameters)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms

from fieldlink.audit import services

_MAX = services.FILTER_MAX_LENGTH


def _text_field(name: str, label: str, help_text: str = "") -> forms.CharField:
    return forms.CharField(
        label=label, required=False, max_length=_MAX[name], strip=True, help_text=help_text
    )


class AuditFilterForm(forms.Form):
    action = _text_field("action", "Action", "Exact, or a prefix ending in “.”, e.g. member.")
    actor = _text_field("actor", "Who", "Part of an e-mail address, or an id")
    target_type = _text_field("target_type", "Target type", "e.g. membership")
    target_id = _text_field("target_id", "Target id")
    since = forms.DateTimeField(
        label="From (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
    )
    until = forms.DateTimeField(
        label="Until (UTC, not included)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
    )
    before_sequence = forms.IntegerField(
        label="Page cursor",
        required=False,
        min_value=1,
        max_value=services.SEQUENCE_MAX,
        widget=forms.HiddenInput,
    )
    limit = forms.IntegerField(
        label="Limit",
        required=False,
        min_value=1,
        max_value=services.PAGE_SIZE_MAX,
        widget=forms.HiddenInput,
    )

    def _clean_text(self, name: str) -> str:
        try:
            return services.check_filter_text(name, self.cleaned_data[name])
        except ValueError as exc:
            raise forms.ValidationError(str(exc).capitalize() + ".") from exc

    def clean_action(self) -> str:
        return self._clean_text("action")

    def clean_actor(self) -> str:
        return self._clean_text("actor")

    def clean_target_type(self) -> str:
        return self._clean_text("target_type")

    def clean_target_id(self) -> str:
        return self._clean_text("target_id")

    def _clean_time(self, name: str) -> datetime | None:
        value: datetime | None = self.cleaned_data[name]
        if value is None:
            return None
        try:
            return services.as_utc(value)
        except ValueError as exc:
            raise forms.ValidationError("Out of range.") from exc

    def clean_since(self) -> datetime | None:
        return self._clean_time("since")

    def clean_until(self) -> datetime | None:
        return self._clean_time("until")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and until <= since:
            self.add_error("until", "Must be later than From.")
        return data

    def filters(self) -> services.AuditFilters:
        data = self.cleaned_data
        return services.AuditFilters(
            action=data["action"],
            actor=data["actor"],
            target_type=data["target_type"],
            target_id=data["target_id"],
            since=data["since"],
            until=data["until"],
        )
