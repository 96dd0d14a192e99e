"""Edge-device credentials: issue, enroll, authenticate, rotate (a pure-ish core over the ORM).

Tokens are 256 random bits with a visible prefix (``fle_`` for one-time enrollment codes, ``fld_``
for device credentials); only their SHA-256 is stored. SHA-256 and not bcrypt: at 256 bits of
entropy a slow hash adds nothing, and the ingestion path authenticates every batch.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from django.utils import timezone

from fieldlink.devices.errors import DeviceCredentialInvalidError, EnrollmentInvalidError
from fieldlink.devices.models import EdgeDevice

CREDENTIAL_PREFIX: Final = "fld_"
ENROLLMENT_PREFIX: Final = "fle_"
ENROLLMENT_LIFETIME: Final = timedelta(hours=24)
_MAX_TOKEN_LENGTH: Final = 128


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # 32 bytes = 256 bits


@dataclass(frozen=True)
class IssuedSecret:
    device: EdgeDevice
    secret: str  # shown once; only its hash is stored


def issue_enrollment_code(device: EdgeDevice) -> IssuedSecret:
    """A new one-time enrollment code for ``device`` (replacing any earlier unused one)."""
    code = _token(ENROLLMENT_PREFIX)
    device.enrollment_digest = digest(code)
    device.enrollment_expires_at = timezone.now() + ENROLLMENT_LIFETIME
    device.save(update_fields=["enrollment_digest", "enrollment_expires_at"])
    return IssuedSecret(device, code)


def enroll(code: str) -> IssuedSecret:
    """Exchange a one-time enrollment code for the device credential (the code dies)."""
    if not code.startswith(ENROLLMENT_PREFIX) or len(code) > _MAX_TOKEN_LENGTH:
        raise EnrollmentInvalidError("This enrollment code is not valid.")
    device = (
        EdgeDevice.objects.select_for_update()
        .filter(enrollment_digest=digest(code), revoked_at=None)
        .first()
    )
    now = timezone.now()
    expires = device.enrollment_expires_at if device is not None else None
    if device is None or expires is None or expires <= now:
        raise EnrollmentInvalidError("This enrollment code is not valid or has expired.")
    credential = _token(CREDENTIAL_PREFIX)
    device.enrollment_digest = ""
    device.enrollment_expires_at = None
    device.enrolled_at = now
    device.credential_prefix = credential[:12]
    device.credential_digest = digest(credential)
    device.previous_credential_digest = ""
    device.credential_rotated_at = now
    device.rotate_credential = False
    device.save()
    return IssuedSecret(device, credential)


def authenticate(token: str) -> EdgeDevice:
    """The device a credential belongs to, or DeviceCredentialInvalidError.

    During a rotation the previous credential stays valid until the new one has been used once.
    """
    if not token.startswith(CREDENTIAL_PREFIX) or len(token) > _MAX_TOKEN_LENGTH:
        raise DeviceCredentialInvalidError("A device credential is required.")
    wanted = digest(token)
    device = (
        EdgeDevice.objects.select_related("organisation")
        .filter(credential_digest=wanted, revoked_at=None)
        .first()
    )
    if device is not None and hmac.compare_digest(device.credential_digest, wanted):
        if device.previous_credential_digest:
            # The new credential works on the device: the old one may die now.
            EdgeDevice.objects.filter(pk=device.pk).update(previous_credential_digest="")
            device.previous_credential_digest = ""
        return device
    device = (
        EdgeDevice.objects.select_related("organisation")
        .filter(previous_credential_digest=wanted, revoked_at=None)
        .exclude(previous_credential_digest="")
        .first()
    )
    if device is not None and hmac.compare_digest(device.previous_credential_digest, wanted):
        return device
    raise DeviceCredentialInvalidError("This device credential is not valid.")


def rotate(device: EdgeDevice) -> IssuedSecret:
    """A new credential; the current one keeps working until the new one is first used."""
    credential = _token(CREDENTIAL_PREFIX)
    device.previous_credential_digest = device.credential_digest
    device.credential_digest = digest(credential)
    device.credential_prefix = credential[:12]
    device.credential_rotated_at = timezone.now()
    device.rotate_credential = False
    device.save(
        update_fields=[
            "previous_credential_digest",
            "credential_digest",
            "credential_prefix",
            "credential_rotated_at",
            "rotate_credential",
        ]
    )
    return IssuedSecret(device, credential)
