"""The REST API at /api/v1, with its OpenAPI 3 description at /api/v1/openapi.json."""

from __future__ import annotations

from ninja import NinjaAPI

from fieldlink.accounts.api import organisations_router
from fieldlink.accounts.api import router as accounts_router
from fieldlink.accounts.auth import API_AUTH
from fieldlink.audit.api import router as audit_router
from fieldlink.billing.api import router as billing_router
from fieldlink.cloud.errors import install_api_error_handlers
from fieldlink.devices.api import router as devices_router
from fieldlink.ops.api import router as ops_router
from fieldlink.support.api import router as support_router
from fieldlink.telemetry.alarm_api import router as alarm_router
from fieldlink.telemetry.api import orgs_router as telemetry_orgs_router
from fieldlink.telemetry.api import router as telemetry_router
from fieldlink.telemetry.webhook_api import router as webhook_router
from fieldlink.updates.api import router as updates_router

API_DESCRIPTION = """\
The Fieldlink REST API for the web UI, mobile apps and scripts.

Authenticate with one of: the web UI's session cookie (plus the CSRF token for writes), an
allauth headless session token (`X-Session-Token`, for the mobile apps: see the sign-in API at
[/_allauth/openapi.html](/_allauth/openapi.html) and `docs/mobile-sign-in.md`), or a personal
API key (`Authorization: Bearer flk_…`). Read-only keys may not write.

Every error has the body `{"code": "...", "message": "...", "details": {...}}`; `code` is stable
and meant for programs, `message` is for people. The API is served over HTTPS only.
"""


api = NinjaAPI(
    title="Fieldlink API",
    version="1",
    description=API_DESCRIPTION,
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
    auth=API_AUTH,
)
install_api_error_handlers(api)

api.add_router("/ops", ops_router)
api.add_router("", accounts_router)
api.add_router("", organisations_router)
api.add_router("", devices_router)  # /units, /orgs/{org_id}/sites|areas|assets|points|devices
api.add_router("/telemetry", telemetry_router)
api.add_router("", updates_router)  # /releases, /orgs/{org_id}/rollouts|update-alerts, …
api.add_router("/support", support_router)
api.add_router("/billing", billing_router)
api.add_router("", audit_router)  # /orgs/{org_id}/audit…
api.add_router("", telemetry_orgs_router)  # /orgs/{org_id}/assets/…/latest, /points/…, /overview
api.add_router("", alarm_router)  # /orgs/{org_id}/alarms…, /orgs/{org_id}/points/{id}/thresholds
api.add_router("", webhook_router)  # /orgs/{org_id}/webhooks…, /orgs/{org_id}/alarm-emails
