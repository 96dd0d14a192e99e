"""Request and response shapes of the accounts API.

Every request body derives from ``StrictInput``: a field the endpoint does not take (``role`` when
creating an organisation, ``organisation`` in an invitation, ``is_staff`` anywhere) is refused
with 422 instead of being silently dropped, so a client can never believe it set something it did
not, and a later field added to a model cannot become writable by accident (mass assignment).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from ninja import Field, Schema
from pydantic import AfterValidator, ConfigDict

from fieldlink.accounts.models import Region, Role

__all__ = [
    "AssignableRole",
    "InvitationIn",
    "InvitationOut",
    "InvitationPreviewOut",
    "InvitationTokenIn",
    "MemberOut",
    "MemberRoleIn",
    "MembershipOut",
    "MyOrganisationOut",
    "OrganisationCreateIn",
    "OrganisationOut",
    "OrganisationRenameIn",
    "StrictInput",
    "TransferOwnershipIn",
]

EMAIL_MAX_LENGTH = 254  # RFC 5321 path limit


class StrictInput(Schema):
    """Base of every request body: unknown fields are an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class AssignableRole(enum.StrEnum):
    """Roles that can be invited or assigned; ownership moves only by transfer."""

    ADMIN = Role.ADMIN.value
    ENGINEER = Role.ENGINEER.value
    VIEWER = Role.VIEWER.value


def _email(value: str) -> str:
    try:
        validate_email(value)
    except DjangoValidationError:
        # The message must not repeat the value (error bodies never echo input).
        raise ValueError("Enter a valid e-mail address.") from None
    return value


Email = Annotated[str, Field(min_length=3, max_length=EMAIL_MAX_LENGTH), AfterValidator(_email)]
OrganisationName = Annotated[str, Field(min_length=1, max_length=100)]


# -- Request bodies ------------------------------------------------------------------------------


class OrganisationCreateIn(StrictInput):
    name: OrganisationName
    region: Region = Field(description="Where the data is stored; fixed once created.")


class OrganisationRenameIn(StrictInput):
    name: OrganisationName


class MemberRoleIn(StrictInput):
    role: AssignableRole = Field(
        description="The new role. Ownership is moved with transfer-ownership, not here."
    )


class TransferOwnershipIn(StrictInput):
    membership_id: UUID = Field(description="The member who becomes owner; you become admin.")


class InvitationIn(StrictInput):
    email: Email
    role: AssignableRole


class InvitationTokenIn(StrictInput):
    # In the body, never the path: URLs end up in access logs and browser history.
    token: str = Field(min_length=1, max_length=200, description="The token from the e-mail.")


# -- Responses -----------------------------------------------------------------------------------


class MyOrganisationOut(Schema):
    id: UUID
    name: str
    region: str
    region_label: str
    role: str | None = Field(description="Your role here (null when access is not membership).")
    pending_deletion: bool
    deletion_due_at: datetime | None


class OrganisationOut(Schema):
    id: UUID
    name: str
    region: str
    region_label: str
    created_at: datetime
    role: str | None = Field(description="Your role here (null when access is not membership).")
    permissions: list[str] = Field(description="What you may do here.")
    pending_deletion: bool
    deletion_requested_at: datetime | None
    deletion_due_at: datetime | None


class MemberOut(Schema):
    id: UUID = Field(description="The membership id (used to change, remove or transfer).")
    user_id: UUID
    email: str
    name: str
    role: str
    joined_at: datetime


class MembershipOut(Schema):
    id: UUID
    organisation_id: UUID
    organisation_name: str
    role: str
    joined_at: datetime


class InvitationOut(Schema):
    id: UUID
    email: str
    role: str
    status: str = Field(description="pending, accepted, revoked or expired")
    created_at: datetime
    expires_at: datetime
    invited_by: str | None = Field(description="E-mail address of who sent it")


class InvitationPreviewOut(Schema):
    organisation_name: str
    email: str = Field(description="The address the invitation was sent to")
    role: str
    invited_by: str | None
    status: str = Field(description="pending, accepted, revoked or expired")
    expires_at: datetime
