"""Forms of the plant pages. They only parse; the services decide what is allowed.

Choices (sites, areas, assets) are passed in by the view from the caller's Scope, so a form
never lists another tenant's objects; the services check every id again anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms

from fieldlink.devices.models import Health
from fieldlink.devices.units import UNIT_CHOICES

Choices = Sequence[tuple[str, str]]


class _PlantForm(forms.Form):
    """Several forms share a page (and field names): each gets its own id prefix, so every
    label points at its own field."""

    id_prefix = "plant"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"{self.id_prefix}_%s")
        super().__init__(*args, **kwargs)


def _choices(field: forms.Field, choices: Choices, *, empty: str | None = None) -> None:
    assert isinstance(field, forms.ChoiceField)  # noqa: S101 -- declared below
    field.choices = [("", empty), *choices] if empty is not None else list(choices)


class SiteForm(_PlantForm):
    id_prefix = "site"

    name = forms.CharField(max_length=100, strip=True)
    description = forms.CharField(max_length=500, required=False, strip=True)


class AreaForm(_PlantForm):
    id_prefix = "area"

    site = forms.ChoiceField()
    parent = forms.ChoiceField(required=False, label="Inside area")
    name = forms.CharField(max_length=100, strip=True)

    def __init__(self, *args: Any, sites: Choices, areas: Choices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["site"], sites)
        _choices(self.fields["parent"], areas, empty="— top of the site —")


class AreaEditForm(_PlantForm):
    id_prefix = "area"

    name = forms.CharField(max_length=100, strip=True)
    parent = forms.ChoiceField(required=False, label="Inside area")

    def __init__(self, *args: Any, areas: Choices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["parent"], areas, empty="— top of the site —")


class AssetForm(_PlantForm):
    id_prefix = "asset"

    tag = forms.CharField(max_length=64, strip=True, help_text="The plant's name, e.g. FIT-101.")
    site = forms.ChoiceField()
    area = forms.ChoiceField(required=False)
    manufacturer = forms.CharField(max_length=100, required=False, strip=True)
    product_code = forms.CharField(max_length=100, required=False, strip=True)
    serial_number = forms.CharField(max_length=100, required=False, strip=True)
    firmware_version = forms.CharField(max_length=50, required=False, strip=True)
    description = forms.CharField(max_length=500, required=False, strip=True)
    hidden = forms.BooleanField(
        required=False,
        label="Hidden",
        help_text="Leave it out of the operators' asset list; its values are still stored.",
    )

    TEXT = ("manufacturer", "product_code", "serial_number", "firmware_version", "description")

    def __init__(self, *args: Any, sites: Choices, areas: Choices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["site"], sites)
        _choices(self.fields["area"], areas, empty="— none —")


class PointForm(_PlantForm):
    id_prefix = "point"

    key = forms.SlugField(max_length=64, help_text="e.g. volume_flow")
    unit = forms.ChoiceField(choices=UNIT_CHOICES)
    description = forms.CharField(max_length=200, required=False, strip=True)


class HealthForm(_PlantForm):
    id_prefix = "health"

    health = forms.ChoiceField(choices=Health.choices, label="Status (NE 107)")
    code = forms.CharField(max_length=32, required=False, strip=True, label="Diagnostic code")
    cause = forms.CharField(max_length=500, required=False, strip=True)
    remedy = forms.CharField(max_length=500, required=False, strip=True)


class DeviceForm(_PlantForm):
    id_prefix = "device"

    name = forms.CharField(max_length=100, strip=True)
    assets = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The assets this edge device reads and may send values for.",
    )

    def __init__(self, *args: Any, assets: Choices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["assets"], assets)
