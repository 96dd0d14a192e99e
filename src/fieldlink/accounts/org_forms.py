"""Forms of the organisation pages. They only parse; the services decide what is allowed."""

from __future__ import annotations

from typing import Any

from django import forms

from fieldlink.accounts.models import Region, Role

# Ownership is transferred, never granted by invitation or role change.
ASSIGNABLE_ROLES = [(r.value, r.label) for r in (Role.ADMIN, Role.ENGINEER, Role.VIEWER)]


class CreateOrganisationForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True)
    region = forms.ChoiceField(
        label="Data region",
        choices=Region.choices,
        initial=Region.EU_CENTRAL,
        help_text="Where the organisation's data is stored. It cannot be changed later.",
    )


class RenameOrganisationForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True)


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail address", max_length=254)
    role = forms.ChoiceField(choices=ASSIGNABLE_ROLES, initial=Role.VIEWER)


class ScheduleDeletionForm(forms.Form):
    confirm_name = forms.CharField(
        label="Type the organisation's name to confirm", max_length=100, strip=True
    )

    def __init__(self, *args: Any, expected_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected_name = expected_name

    def clean_confirm_name(self) -> str:
        value: str = self.cleaned_data["confirm_name"]
        if value != self.expected_name.strip():
            raise forms.ValidationError("The name does not match; nothing was scheduled.")
        return value
