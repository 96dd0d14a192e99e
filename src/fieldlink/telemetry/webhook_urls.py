"""Pages under /orgs/<org_id>/alarms/notifications/: webhooks, deliveries, e-mail subscription."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.telemetry import webhook_views as views

app_name = "notifications"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.index, name="index"),
    path("emails/", views.alarm_emails, name="emails"),
    path("webhooks/add/", views.webhook_add, name="webhook-add"),
    path("webhooks/<uuid:webhook_id>/", views.webhook_detail, name="webhook"),
    path("webhooks/<uuid:webhook_id>/rename/", views.webhook_rename, name="webhook-rename"),
    path("webhooks/<uuid:webhook_id>/enable/", views.webhook_enable, name="webhook-enable"),
    path("webhooks/<uuid:webhook_id>/disable/", views.webhook_disable, name="webhook-disable"),
    path("webhooks/<uuid:webhook_id>/rotate/", views.webhook_rotate, name="webhook-rotate"),
    path("webhooks/<uuid:webhook_id>/delete/", views.webhook_delete, name="webhook-delete"),
    path("webhooks/<uuid:webhook_id>/test/", views.webhook_test, name="webhook-test"),
    path(
        "webhooks/<uuid:webhook_id>/deliveries/<uuid:delivery_id>/redeliver/",
        views.delivery_redeliver,
        name="delivery-redeliver",
    ),
]
