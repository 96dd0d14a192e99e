from django.urls import include, path

from fieldlink.accounts import views as accounts_views
from fieldlink.cloud import views
from fieldlink.cloud.api import api
from fieldlink.ops import views as ops_views
from fieldlink.support import views as support_views

handler400 = "fieldlink.cloud.views.bad_request"
handler403 = "fieldlink.cloud.views.permission_denied"
handler404 = "fieldlink.cloud.views.page_not_found"
handler500 = "fieldlink.cloud.views.server_error"
handler429 = "fieldlink.cloud.views.too_many_requests"  # used by allauth's rate limits

urlpatterns = [
    path("", views.home, name="home"),
    path("manifest.webmanifest", views.manifest, name="manifest"),
    path(".well-known/security.txt", support_views.security_txt, name="security-txt"),
    path("support/", include("fieldlink.support.urls")),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("accounts/", include("allauth.urls")),
    path("me/", include("fieldlink.accounts.urls")),
    path("orgs/", include("fieldlink.accounts.org_urls")),
    path("orgs/<uuid:org_id>/audit/", include("fieldlink.audit.urls")),
    path("orgs/<uuid:org_id>/plant/", include("fieldlink.devices.urls")),
    path("orgs/<uuid:org_id>/assets/", include("fieldlink.telemetry.urls")),
    path("orgs/<uuid:org_id>/alarms/notifications/", include("fieldlink.telemetry.webhook_urls")),
    path("orgs/<uuid:org_id>/alarms/", include("fieldlink.telemetry.alarm_urls")),
    path("orgs/<uuid:org_id>/updates/", include("fieldlink.updates.urls")),
    path("invitations/<str:token>/", accounts_views.invitation, name="invitation"),
    path("_allauth/", include("allauth.headless.urls")),
    path("api/v1/", api.urls),
]
