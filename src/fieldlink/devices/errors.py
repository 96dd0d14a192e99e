"""Errors of the devices context, each with a stable code (root: fieldlink.kit.errors)."""

from fieldlink.kit.errors import FieldlinkError


class DeviceCredentialInvalidError(FieldlinkError):
    """No usable device credential: unknown, revoked, malformed or missing."""

    code = "device_credential_invalid"
    kind = "unauthenticated"


class EnrollmentInvalidError(FieldlinkError):
    code = "enrollment_invalid"
    kind = "unauthenticated"
