"""Errors of the audit context, each with a stable code (root: fieldlink.kit.errors)."""

from fieldlink.kit.errors import FieldlinkError


class AuditImmutableError(FieldlinkError):
    """An audit entry was to be changed or removed: the trail is append-only."""

    code = "audit_immutable"
    kind = "conflict"


class AuditOutsideTransactionError(FieldlinkError):
    """An entry must commit or roll back with the change it records, so the boundary's
    transaction has to be open when it is written."""

    code = "audit_outside_transaction"
    kind = "internal"


class AuditValueError(FieldlinkError):
    """A value that cannot be stored as given, so its hash could not be reproduced."""

    code = "audit_invalid_value"
    kind = "invalid"
