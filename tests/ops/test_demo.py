"""The demo set-up of ``./dev run``: created once, password printed once, nothing secret stored."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from fieldlink.accounts.models import Membership, Role, User
from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
from fieldlink.ops.demo import (
    DEMO_EMAIL,
    ensure_demo,
    ensure_update_repository,
    new_enrollment_code,
)
from fieldlink.updates import repository
from fieldlink.updates.models import Release, TufMetadata
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]


def test_first_run_creates_an_owner_with_a_strong_generated_password(tmp_path: Path) -> None:
    demo = ensure_demo(tmp_path)
    assert demo.password is not None
    register_canary(demo.password)
    user = User.objects.get(email=DEMO_EMAIL)
    validate_password(demo.password, user)  # raises if any password rule refuses it
    assert authenticate(email=DEMO_EMAIL, password=demo.password) == user
    membership = Membership.objects.get(user=user)
    assert (str(membership.organisation_id), membership.role) == (demo.organisation_id, Role.OWNER)
    state_file = tmp_path / "demo" / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert demo.password not in state_file.read_text()
    assert set(json.loads(state_file.read_text())) == {"organisation_id", "device_id", "email"}


def test_later_runs_create_nothing_and_print_no_password(tmp_path: Path) -> None:
    first = ensure_demo(tmp_path)
    register_canary(first.password or "")
    again = ensure_demo(tmp_path)
    assert again.password is None
    assert (again.organisation_id, again.device_id) == (first.organisation_id, first.device_id)
    assert User.objects.filter(email=DEMO_EMAIL).count() == 1
    assert EdgeDevice.objects.count() == 1


def test_two_installs_get_different_passwords(tmp_path: Path) -> None:
    first = ensure_demo(tmp_path / "a")
    second = ensure_demo(tmp_path / "b")  # another var directory: a new demo organisation
    assert first.password
    assert second.password
    register_canary(first.password)
    register_canary(second.password)
    assert first.password != second.password
    assert authenticate(email=DEMO_EMAIL, password=first.password) is None


def test_enrollment_code_enrolls_the_demo_device(tmp_path: Path) -> None:
    demo = ensure_demo(tmp_path)
    register_canary(demo.password or "")
    code = new_enrollment_code(demo)
    register_canary(code)
    with transaction.atomic():
        issued = credentials.enroll(code)
    register_canary(issued.secret)
    assert str(issued.device.pk) == demo.device_id


def test_update_repository_is_made_once_with_no_offline_key_kept(
    tmp_path: Path, settings: Any
) -> None:
    settings.VAR_DIR = tmp_path
    assert ensure_update_repository() is True
    assert repository.has_repository()
    roles = set(TufMetadata.objects.values_list("role", flat=True))
    assert {"root", "targets", "release", "config", "snapshot", "timestamp"} <= roles
    assert not Release.objects.exists()  # configuration only: no software was signed
    # The only private keys on disk are the cloud's three online keys.
    keys = sorted(
        p.relative_to(tmp_path)
        for p in tmp_path.rglob("*")
        if b"PRIVATE KEY" in (p.read_bytes() if p.is_file() else b"")
    )
    assert [str(k) for k in keys] == [
        "tuf/online/config.pem",
        "tuf/online/snapshot.pem",
        "tuf/online/timestamp.pem",
    ]
    rows = TufMetadata.objects.count()
    assert ensure_update_repository() is False
    assert TufMetadata.objects.count() == rows
