"""Edge-device credentials: enrollment, authentication, rotation with overlap, revocation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fieldlink.accounts.models import Role
from fieldlink.devices import credentials, services
from fieldlink.devices.errors import (
    DeviceCredentialInvalidError,
    DeviceRevokedError,
    EnrollmentInvalidError,
)
from fieldlink.devices.models import EdgeDevice
from tests.accounts.conftest import found_in_database
from tests.devices.conftest import Team
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def _new_device(team: Team, name: str = "Edge 1") -> tuple[EdgeDevice, str]:
    issued = services.create_device(team.scope(Role.ENGINEER), name=name)
    return issued.device, register_canary(issued.secret)


def _enrolled(team: Team, name: str = "Edge 1") -> tuple[EdgeDevice, str]:
    device, code = _new_device(team, name)
    return device, register_canary(credentials.enroll(code).secret)


def test_enroll_and_authenticate(team: Team) -> None:
    device, code = _new_device(team)
    assert code.startswith("fle_")
    assert len(code) >= 40
    credential = register_canary(credentials.enroll(code).secret)
    assert credential.startswith("fld_")
    assert credentials.authenticate(credential).pk == device.pk
    stored = EdgeDevice.objects.get(pk=device.pk)
    assert stored.enrolled_at is not None
    assert stored.enrollment_digest == ""


def test_no_raw_token_stored(team: Team) -> None:
    device, code = _new_device(team)
    assert found_in_database(code) == []
    credential = register_canary(credentials.enroll(code).secret)
    assert found_in_database(credential) == []
    rotated = register_canary(credentials.rotate(EdgeDevice.objects.get(pk=device.pk)).secret)
    assert found_in_database(rotated) == []


def test_enrollment_code_reuse_refused(team: Team) -> None:
    _, code = _new_device(team)
    register_canary(credentials.enroll(code).secret)
    with pytest.raises(EnrollmentInvalidError):
        credentials.enroll(code)


def test_expired_enrollment_code_refused(team: Team) -> None:
    device, code = _new_device(team)
    EdgeDevice.objects.filter(pk=device.pk).update(
        enrollment_expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(EnrollmentInvalidError):
        credentials.enroll(code)


def test_replaced_enrollment_code_refused(team: Team) -> None:
    device, first = _new_device(team)
    second = services.new_enrollment_code(team.scope(Role.ENGINEER), device.pk)
    register_canary(second.secret)
    with pytest.raises(EnrollmentInvalidError):
        credentials.enroll(first)
    register_canary(credentials.enroll(second.secret).secret)


def test_revoked_device_credential_refused(team: Team) -> None:
    device, credential = _enrolled(team)
    services.revoke_device(team.scope(Role.ENGINEER), device.pk)
    with pytest.raises(DeviceCredentialInvalidError):
        credentials.authenticate(credential)
    with pytest.raises(DeviceRevokedError):
        services.new_enrollment_code(team.scope(Role.ENGINEER), device.pk)


def test_revoked_device_enrollment_code_refused(team: Team) -> None:
    device, code = _new_device(team)
    services.revoke_device(team.scope(Role.ENGINEER), device.pk)
    with pytest.raises(EnrollmentInvalidError):
        credentials.enroll(code)


def test_forged_or_malformed_credentials_refused(team: Team) -> None:
    _enrolled(team)
    for token in ("", "fld_", "fld_" + "A" * 43, "flk_" + "A" * 43, "fld_" + "x" * 500):
        with pytest.raises(DeviceCredentialInvalidError):
            credentials.authenticate(token)


def test_rotation_overlap_then_old_credential_dies(team: Team) -> None:
    device, old = _enrolled(team)
    services.request_rotation(team.scope(Role.ENGINEER), device.pk)
    assert EdgeDevice.objects.get(pk=device.pk).rotate_credential is True
    new = register_canary(credentials.rotate(EdgeDevice.objects.get(pk=device.pk)).secret)
    assert EdgeDevice.objects.get(pk=device.pk).rotate_credential is False
    assert credentials.authenticate(old).pk == device.pk  # until the new one is used
    assert credentials.authenticate(new).pk == device.pk
    with pytest.raises(DeviceCredentialInvalidError):
        credentials.authenticate(old)


def test_rotation_request_needs_an_enrolled_device(team: Team) -> None:
    device, _ = _new_device(team)
    with pytest.raises(Exception, match="not enrolled"):
        services.request_rotation(team.scope(Role.ENGINEER), device.pk)
