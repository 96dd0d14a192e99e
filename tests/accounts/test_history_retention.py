"""The security history is kept at least 90 days (365 in fact) and pruned after that."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fieldlink.accounts.models import SecurityEvent, SecurityEventKind, User
from fieldlink.accounts.tasks import prune_security_history

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def test_history_older_than_retention_is_pruned_and_90_days_are_kept() -> None:
    user = User.objects.create_user(email="history@plant.example")
    now = timezone.now()
    ages = {"fresh": 1, "quarter": 91, "half_year": 200, "old": 366, "ancient": 1000}
    for label, days in ages.items():
        SecurityEvent.objects.create(
            user=user,
            kind=SecurityEventKind.SIGN_IN,
            created_at=now - timedelta(days=days),
            details={"label": label},
        )
    assert prune_security_history.call() == 2
    kept = set(SecurityEvent.objects.values_list("details__label", flat=True))
    assert kept == {"fresh", "quarter", "half_year"}
