"""REST endpoints of the accounts context (thin: parse, call one service, render)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from fieldlink.accounts import services
from fieldlink.accounts.auth import principal
from fieldlink.accounts.models import ApiKey, ApiKeyScope, SecurityEvent

router = Router(tags=["accounts"])


class SignInOut(Schema):
    at: datetime
    ip: str | None
    device: str


class MeOut(Schema):
    id: UUID
    email: str
    first_name: str
    last_name: str
    last_sign_in: SignInOut | None
    previous_sign_in: SignInOut | None
    authenticated_via: str


class SecurityEventOut(Schema):
    at: datetime
    kind: str
    ip: str | None
    device: str


class ApiKeyOut(Schema):
    id: UUID
    name: str
    prefix: str
    scope: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    last_used_ip: str | None
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The key itself. Shown once; only its hash is stored.")


class ApiKeyIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    scope: ApiKeyScope = ApiKeyScope.READ
    lifetime_days: int = Field(default=90, ge=1, le=366)


class RotateIn(Schema):
    overlap_hours: int = Field(default=24, ge=0, le=720)


def _sign_in(event: SecurityEvent | None) -> SignInOut | None:
    if event is None:
        return None
    return SignInOut(at=event.created_at, ip=event.ip, device=event.device)


def _key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key, from_attributes=True)


@router.get("/me", response=MeOut, summary="The signed-in user, with last and previous sign-in")
def me(request: HttpRequest) -> MeOut:
    who = principal(request)
    last, previous = services.recent_sign_ins(who.user)
    return MeOut(
        id=who.user.id,
        email=who.user.email,
        first_name=who.user.first_name,
        last_name=who.user.last_name,
        last_sign_in=_sign_in(last),
        previous_sign_in=_sign_in(previous),
        authenticated_via=who.via,
    )


@router.get("/me/security-history", response=list[SecurityEventOut], summary="90-day history")
def security_history(request: HttpRequest) -> list[SecurityEventOut]:
    events = services.security_history(principal(request).user, days=90)
    return [
        SecurityEventOut(at=e.created_at, kind=e.kind, ip=e.ip, device=e.device) for e in events
    ]


@router.get("/me/api-keys", response=list[ApiKeyOut], summary="Your API keys (never the keys)")
def list_api_keys(request: HttpRequest) -> list[ApiKeyOut]:
    return [_key_out(key) for key in services.api_keys_of(principal(request).user)]


@router.post("/me/api-keys", response={201: ApiKeyCreatedOut}, summary="Create an API key")
def create_api_key(request: HttpRequest, payload: ApiKeyIn) -> Status[ApiKeyCreatedOut]:
    with transaction.atomic():
        issued = services.create_api_key(
            principal(request).user,
            name=payload.name,
            scope=payload.scope,
            lifetime=timedelta(days=payload.lifetime_days),
            request=request,
        )
    out = ApiKeyCreatedOut(**_key_out(issued.key).model_dump(), key=issued.secret)
    return Status(201, out)


@router.post("/me/api-keys/{key_id}/rotate", response={201: ApiKeyCreatedOut}, summary="Rotate")
def rotate_api_key(
    request: HttpRequest, key_id: UUID, payload: RotateIn
) -> Status[ApiKeyCreatedOut]:
    with transaction.atomic():
        issued = services.rotate_api_key(
            principal(request).user,
            key_id,
            overlap=timedelta(hours=payload.overlap_hours),
            request=request,
        )
    return Status(201, ApiKeyCreatedOut(**_key_out(issued.key).model_dump(), key=issued.secret))


@router.delete("/me/api-keys/{key_id}", response=ApiKeyOut, summary="Revoke an API key")
def revoke_api_key(request: HttpRequest, key_id: UUID) -> ApiKeyOut:
    with transaction.atomic():
        key = services.revoke_api_key(principal(request).user, key_id, request)
    return _key_out(key)
