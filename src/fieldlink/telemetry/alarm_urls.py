"""Pages under /orgs/<org_id>/alarms/: the alarm list, one alarm, a point's limits."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.telemetry import alarm_views

app_name = "alarms"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", alarm_views.alarm_list, name="list"),
    path("<uuid:alarm_id>/", alarm_views.alarm_detail, name="detail"),
    path("<uuid:alarm_id>/acknowledge/", alarm_views.alarm_acknowledge, name="acknowledge"),
    path("limits/<uuid:point_id>/", alarm_views.point_limits, name="limits"),
]
