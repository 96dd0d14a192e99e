"""Pages under /orgs/<org_id>/updates/: overview, rollouts, a device's configuration."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.updates import views

app_name = "updates"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.overview, name="overview"),
    path("rollouts/new", views.rollout_new, name="rollout-new"),
    path("rollouts/<uuid:rollout_id>/", views.rollout, name="rollout"),
    path("rollouts/<uuid:rollout_id>/pause", views.rollout_pause, name="rollout-pause"),
    path("rollouts/<uuid:rollout_id>/resume", views.rollout_resume, name="rollout-resume"),
    path("rollouts/<uuid:rollout_id>/cancel", views.rollout_cancel, name="rollout-cancel"),
    path("devices/<uuid:device_id>/configuration", views.configuration, name="configuration"),
]
