from __future__ import annotations

from django import forms

from fieldlink.accounts.models import ApiKeyScope

LIFETIME_CHOICES = [("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]
OVERLAP_CHOICES = [("0", "End it now"), ("1", "1 hour"), ("24", "1 day"), ("168", "7 days")]


class CreateApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True)
    scope = forms.ChoiceField(choices=ApiKeyScope.choices, initial=ApiKeyScope.READ)
    lifetime_days = forms.TypedChoiceField(
        label="Valid for", choices=LIFETIME_CHOICES, coerce=int, initial="90"
    )


class RotateApiKeyForm(forms.Form):
    overlap_hours = forms.TypedChoiceField(choices=OVERLAP_CHOICES, coerce=int, initial="24")
