"""Forms of the updates pages. They only parse; the services decide what is allowed.

Choices (releases, devices, groups) are passed in by the view from the caller's Scope, so a
form never lists another tenant's devices; the service checks every id again anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django import forms

from fieldlink.edge.device_config import MAX_CONFIG_TEXT
from fieldlink.updates.rollouts import (
    DEFAULT_FAILURE_THRESHOLD_PCT,
    DEFAULT_SILENT_TIMEOUT,
    DEFAULT_WAVES,
    MAX_SILENT_TIMEOUT,
    MAX_WAVES,
)

Choices = Sequence[tuple[str, str]]

FORCE_WARNING = (
    "Only to go back to an older version on purpose (e.g. a bad release). Devices install the "
    "older agent only if the release engineers signed it to allow a downgrade; settings and "
    "data the newer version wrote may not be understood by the older one."
)


class _UpdatesForm(forms.Form):
    id_prefix = "updates"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"{self.id_prefix}_%s")
        super().__init__(*args, **kwargs)


class RolloutForm(_UpdatesForm):
    id_prefix = "rollout"

    version = forms.ChoiceField(label="Release")
    devices = forms.MultipleChoiceField(
        label="Devices",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Choose devices, or a group below (not both).",
    )
    group = forms.ChoiceField(
        label="Or every device of the group", required=False, help_text="Its devices now."
    )
    waves = forms.CharField(
        label="Waves",
        initial=", ".join(str(w) for w in DEFAULT_WAVES),
        max_length=60,
        help_text=(
            "Cumulative percentages of the devices, ending at 100: each wave starts when the "
            "one before has finished."
        ),
    )
    failure_threshold_pct = forms.IntegerField(
        label="Halt above failure rate (%)",
        min_value=0,
        max_value=100,
        initial=DEFAULT_FAILURE_THRESHOLD_PCT,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )
    silent_timeout_minutes = forms.IntegerField(
        label="Silent timeout (minutes)",
        min_value=1,
        max_value=int(MAX_SILENT_TIMEOUT.total_seconds() // 60),
        initial=int(DEFAULT_SILENT_TIMEOUT.total_seconds() // 60),
        help_text="A device that reports nothing this long after the offer counts as failed.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )
    window_start = forms.TimeField(
        label="Maintenance window from (UTC)",
        required=False,
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        help_text="Optional: new offers only inside this daily window.",
    )
    window_end = forms.TimeField(
        label="Maintenance window until (UTC)",
        required=False,
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
    )
    force = forms.BooleanField(label="Force a downgrade", required=False, help_text=FORCE_WARNING)

    def __init__(
        self,
        *args: Any,
        releases: Choices,
        devices: Choices,
        groups: Sequence[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, choices in (
            ("version", list(releases)),
            ("devices", list(devices)),
            ("group", [("", "—"), *((g, g) for g in groups)]),
        ):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)  # noqa: S101 -- declared above
            field.choices = choices

    def clean_waves(self) -> list[int]:
        text: str = self.cleaned_data["waves"]
        try:
            waves = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError as exc:
            raise forms.ValidationError(
                "Whole numbers separated by commas, e.g. 5, 25, 100."
            ) from exc
        if not waves or len(waves) > MAX_WAVES:
            raise forms.ValidationError(f"Between 1 and {MAX_WAVES} waves.")
        return waves

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("devices") and data.get("group"):
            self.add_error("group", "Choose devices or a group, not both.")
        elif not data.get("devices") and not data.get("group") and not self.errors:
            self.add_error("devices", "Choose the devices, or a group.")
        if (data.get("window_start") is None) != (data.get("window_end") is None):
            self.add_error("window_end", "A maintenance window needs both a start and an end.")
        return data

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "version": data["version"],
            "device_ids": data["devices"] or None,
            "group": data["group"] or "",
            "waves": data["waves"],
            "failure_threshold_pct": data["failure_threshold_pct"],
            "silent_timeout": timedelta(minutes=data["silent_timeout_minutes"]),
            "window_start": data["window_start"],
            "window_end": data["window_end"],
            "force": bool(data["force"]),
        }


# The service's "field" detail → the form field that shows the message.
ROLLOUT_FIELDS = {
    "version": "version",
    "device_ids": "devices",
    "group": "group",
    "waves": "waves",
    "failure_threshold_pct": "failure_threshold_pct",
    "silent_timeout": "silent_timeout_minutes",
    "window": "window_end",
}


class ConfigurationForm(_UpdatesForm):
    id_prefix = "configuration"

    toml = forms.CharField(
        label="Configuration (TOML)",
        max_length=MAX_CONFIG_TEXT,
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 18, "spellcheck": "false", "autocapitalize": "off", "class": "code"}
        ),
        help_text='log_level = "info" and the [[sources]] tables, as in edge.toml.',
    )
