"""Errors of the accounts context, each with a stable code (root: fieldlink.kit.errors)."""

from fieldlink.kit.errors import FieldlinkError


class ApiKeyNotFoundError(FieldlinkError):
    code = "api_key_not_found"
    kind = "not_found"


class ApiKeyInvalidError(FieldlinkError):
    code = "api_key_invalid"
    kind = "invalid"


class StaffSecondFactorRequiredError(FieldlinkError):
    code = "staff_mfa_required"
    kind = "forbidden"


class SignInUnavailableError(FieldlinkError):
    """The shared rate-limit store is down: sign-in fails closed rather than unlimited."""

    code = "sign_in_unavailable"
    kind = "unavailable"
