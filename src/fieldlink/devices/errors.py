"""Errors of the devices context, each with a stable code (root: fieldlink.kit.errors)."""

from fieldlink.kit.errors import FieldlinkError


class DeviceCredentialInvalidError(FieldlinkError):
    """No usable device credential: unknown, revoked, malformed or missing."""

    code = "device_credential_invalid"
    kind = "unauthenticated"


class EnrollmentInvalidError(FieldlinkError):
    code = "enrollment_invalid"
    kind = "unauthenticated"


class PlantInvalidError(FieldlinkError):
    """A plant change that breaks a rule (wrong site, unknown unit, a cycle, a bad key)."""

    code = "plant_invalid"
    kind = "invalid"


class PlantNameTakenError(FieldlinkError):
    """A name that must be unique (site, asset tag, point key, device name) is in use."""

    code = "plant_name_taken"
    kind = "conflict"


class PlantNotEmptyError(FieldlinkError):
    """A site or area that still holds assets cannot be deleted."""

    code = "plant_not_empty"
    kind = "conflict"


class DeviceRevokedError(FieldlinkError):
    code = "device_revoked"
    kind = "conflict"
