"""Web pages of the audit trail, under /orgs/<org_id>/audit/."""

from django.urls import URLPattern, URLResolver

app_name = "audit"
urlpatterns: list[URLPattern | URLResolver] = []
