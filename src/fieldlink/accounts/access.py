"""The one scoping layer: who may see and do what in which organisation.

Every read and write of customer data goes through a ``Scope``: the acting ``Principal`` (a user
by browser session or app token, an API key, later a device or a support grant) resolved against
one organisation. ``resolve`` answers "not found" when the principal has no standing there at
all, so another tenant's organisation is indistinguishable from one that does not exist;
``Scope.filter`` and ``Scope.get`` narrow any customer-data model to that organisation through
the model's ``organisation_lookup``; ``Scope.require`` checks a permission.

Standing comes from *permission sources*: membership (role → permissions) is the first; a
customer-granted, ticket-bound support grant is another source that the support context adds
with ``register_source``. A source returns a ``Standing`` or None; being platform staff is not a
source, so staff see nothing of a customer unless a grant says so.

Views, API handlers and services never filter by organisation themselves
(tests/security/test_scoping_rule.py checks it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import UUID

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import models

from fieldlink.accounts.models import ApiKey, ApiKeyScope, Membership, Organisation, Role, User
from fieldlink.kit.errors import FieldlinkError, NotFoundError

__all__ = [
    "Permission",
    "PermissionDeniedError",
    "Principal",
    "Scope",
    "Standing",
    "organisations_of",
    "register_source",
    "resolve",
]

M = TypeVar("M", bound=models.Model)


class Permission(enum.StrEnum):
    ORG_VIEW = "org.view"
    DATA_VIEW = "data.view"
    MEMBERS_VIEW = "members.view"
    DATA_CONFIGURE = "data.configure"  # devices, assets, measuring points, thresholds
    MEMBERS_MANAGE = "members.manage"  # invite, change roles, remove (never the owner)
    ORG_SETTINGS = "org.settings"
    AUDIT_VIEW = "audit.view"  # view, filter and export the audit trail
    EXPORT_REQUEST = "export.request"
    ORG_DELETE = "org.delete"  # request and cancel deletion
    OWNERSHIP_TRANSFER = "ownership.transfer"
    # Acknowledge alarms and choose one's own alarm e-mails. Every member may: the operator on
    # shift who sees an alarm is often a viewer, and acknowledging changes no configuration.
    ALARMS_RESPOND = "alarms.respond"
    # Start, pause, resume and cancel software rollouts: they replace the software of many
    # devices at once, so admins and owners only (engineers configure single devices).
    ROLLOUTS_MANAGE = "rollouts.manage"


_VIEWER: Final = frozenset({Permission.ORG_VIEW, Permission.DATA_VIEW, Permission.MEMBERS_VIEW})
_MEMBER: Final = _VIEWER | {Permission.ALARMS_RESPOND}
_ENGINEER: Final = _MEMBER | {Permission.DATA_CONFIGURE}
_ADMIN: Final = _ENGINEER | {
    Permission.MEMBERS_MANAGE,
    Permission.ORG_SETTINGS,
    Permission.AUDIT_VIEW,
    Permission.EXPORT_REQUEST,
    Permission.ROLLOUTS_MANAGE,
}
_OWNER: Final = _ADMIN | {Permission.ORG_DELETE, Permission.OWNERSHIP_TRANSFER}

ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.VIEWER: _MEMBER,
    Role.ENGINEER: _ENGINEER,
    Role.ADMIN: _ADMIN,
    Role.OWNER: _OWNER,
}

# What a read-only API key keeps of its user's permissions: nothing that changes state.
READ_ONLY: Final = frozenset({*_VIEWER, Permission.AUDIT_VIEW})

# What may still happen while an organisation waits for its deletion: looking, taking the data
# out, and changing one's mind. Everything else is refused until deletion is cancelled.
ALLOWED_WHILE_DELETING: Final = READ_ONLY | {Permission.EXPORT_REQUEST, Permission.ORG_DELETE}


class PermissionDeniedError(FieldlinkError):
    code = "permission_denied"
    kind = "forbidden"


class OrganisationPendingDeletionError(FieldlinkError):
    code = "organisation_pending_deletion"
    kind = "conflict"


@dataclass(frozen=True)
class Principal:
    """Who is acting. ``via`` is "session", "session_token" or "api_key"."""

    user: User
    via: str
    api_key: ApiKey | None = None

    @property
    def can_write(self) -> bool:
        return self.api_key is None or self.api_key.scope == ApiKeyScope.READ_WRITE


@dataclass(frozen=True)
class Standing:
    """What one permission source grants a principal in one organisation."""

    permissions: frozenset[Permission]
    role: Role | None = None  # set by membership
    grant_id: str = ""  # set by a support grant: audit entries name it


Source = Callable[[Principal, Organisation], Standing | None]


def _membership_source(principal: Principal, organisation: Organisation) -> Standing | None:
    if principal.user.is_platform_staff:
        # Staff accounts are a separate kind of principal and never members (services refuse
        # it); this is the second lock on that door.
        return None
    role = (
        Membership.objects.filter(organisation=organisation, user=principal.user)
        .values_list("role", flat=True)
        .first()
    )
    if role is None:
        return None
    return Standing(ROLE_PERMISSIONS[Role(role)], role=Role(role))


_SOURCES: list[Source] = [_membership_source]


def register_source(source: Source) -> None:
    """Add a permission source (e.g. support grants); its permissions add to membership's."""
    if source not in _SOURCES:
        _SOURCES.append(source)


@dataclass(frozen=True)
class Scope:
    principal: Principal
    organisation: Organisation
    permissions: frozenset[Permission]
    role: Role | None = None
    grant_id: str = ""

    @property
    def user(self) -> User:
        return self.principal.user

    def can(self, permission: Permission) -> bool:
        if permission not in self.permissions:
            return False
        return not (self.organisation.pending_deletion and permission not in ALLOWED_WHILE_DELETING)

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise PermissionDeniedError(
                "Your role in this organisation does not allow this.",
                details={"permission": str(permission)},
            )
        if self.organisation.pending_deletion and permission not in ALLOWED_WHILE_DELETING:
            raise OrganisationPendingDeletionError(
                "This organisation is scheduled for deletion; cancel the deletion to change it.",
                details={"deletion_due_at": _iso(self.organisation.deletion_due_at)},
            )

    def filter(self, queryset: models.QuerySet[M]) -> models.QuerySet[M]:
        """``queryset`` narrowed to this organisation."""
        model = queryset.model
        lookup = getattr(model, "organisation_lookup", None)
        if not isinstance(lookup, str):
            raise TypeError(f"{model.__name__} has no organisation_lookup: it is not scoped")
        value: Any = self.organisation.pk
        field_name = lookup.split("__", 1)[0]
        # "pk" is a query alias, not a field name: get_field() does not know it.
        field = model._meta.pk if field_name == "pk" else model._meta.get_field(field_name)
        if isinstance(field, models.CharField):
            value = str(value)  # e.g. the audit trail's chain, which is text on purpose
        return queryset.filter(**{lookup: value})

    def get(self, queryset: models.QuerySet[M], pk: Any, *, what: str = "object") -> M:
        """One object of this organisation, or a 404 that says nothing about other tenants."""
        try:
            return self.filter(queryset).get(pk=pk)
        except (ObjectDoesNotExist, ValueError, TypeError, ValidationError) as exc:
            # A malformed id is "not found" too: it names no object of this organisation.
            raise NotFoundError(f"No such {what}.") from exc


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def resolve(principal: Principal, organisation_id: UUID | str) -> Scope:
    """The principal's scope in one organisation, or NotFoundError when it has no standing."""
    pk = _uuid(organisation_id)
    organisation = None if pk is None else Organisation.objects.filter(pk=pk).first()
    standings = [] if organisation is None else _standings(principal, organisation)
    if organisation is None or not standings:
        raise NotFoundError("No such organisation.")
    permissions = frozenset().union(*(s.permissions for s in standings))
    if not principal.can_write:
        permissions &= READ_ONLY
    role = next((s.role for s in standings if s.role is not None), None)
    grant_id = next((s.grant_id for s in standings if s.grant_id), "")
    return Scope(principal, organisation, permissions, role=role, grant_id=grant_id)


def _standings(principal: Principal, organisation: Organisation) -> list[Standing]:
    if not principal.user.is_active:
        return []
    return [s for s in (source(principal, organisation) for source in _SOURCES) if s is not None]


def _uuid(value: UUID | str) -> UUID | None:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


def organisations_of(principal: Principal) -> list[tuple[Organisation, Role]]:
    """The organisations a user belongs to, with the role in each (for lists and switchers)."""
    if principal.user.is_platform_staff or not principal.user.is_active:
        return []
    rows: Iterable[Membership] = Membership.objects.filter(user=principal.user).select_related(
        "organisation"
    )
    return sorted(
        ((m.organisation, Role(m.role)) for m in rows), key=lambda pair: pair[0].name.lower()
    )
