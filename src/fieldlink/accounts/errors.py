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


class StaffNotCustomerError(FieldlinkError):
    """Platform staff accounts never belong to customer organisations (support uses grants)."""

    code = "staff_not_customer"
    kind = "forbidden"


class InvitationInvalidError(FieldlinkError):
    code = "invitation_invalid"
    kind = "conflict"


class InvitationEmailMismatchError(FieldlinkError):
    code = "invitation_email_mismatch"
    kind = "forbidden"


class AlreadyMemberError(FieldlinkError):
    code = "already_member"
    kind = "conflict"


class OwnerProtectedError(FieldlinkError):
    """The owner cannot be removed, demoted or leave; ownership is transferred first."""

    code = "owner_protected"
    kind = "conflict"


class OrganisationInvalidError(FieldlinkError):
    code = "organisation_invalid"
    kind = "invalid"


class OrganisationStateError(FieldlinkError):
    code = "organisation_state"
    kind = "conflict"
