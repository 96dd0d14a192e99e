"""Web pages of the audit trail, under /orgs/<org_id>/audit/."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.audit import views

app_name = "audit"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.trail, name="trail"),
]
