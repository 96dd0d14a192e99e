"""Pages under /orgs/<org_id>/alarms/notifications/: webhooks, deliveries, e-mail subscription."""

from django.urls import URLPattern, URLResolver

app_name = "notifications"
urlpatterns: list[URLPattern | URLResolver] = []
