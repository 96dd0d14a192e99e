"""The plant configuration pages, under /orgs/<org_id>/plant/."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.devices import views

app_name = "plant"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.hierarchy, name="hierarchy"),
    path("sites/add", views.site_add, name="site-add"),
    path("sites/<uuid:site_id>/", views.site, name="site"),
    path("sites/<uuid:site_id>/update", views.site_update, name="site-update"),
    path("sites/<uuid:site_id>/delete", views.site_delete, name="site-delete"),
    path("areas/add", views.area_add, name="area-add"),
    path("areas/<uuid:area_id>/", views.area, name="area"),
    path("areas/<uuid:area_id>/update", views.area_update, name="area-update"),
    path("areas/<uuid:area_id>/delete", views.area_delete, name="area-delete"),
    path("assets/add", views.asset_add, name="asset-add"),
    path("assets/<uuid:asset_id>/", views.asset, name="asset"),
    path("assets/<uuid:asset_id>/update", views.asset_update, name="asset-update"),
    path("assets/<uuid:asset_id>/delete", views.asset_delete, name="asset-delete"),
    path("assets/<uuid:asset_id>/health", views.asset_health, name="asset-health"),
    path("assets/<uuid:asset_id>/points/add", views.point_add, name="point-add"),
    path("points/<uuid:point_id>/update", views.point_update, name="point-update"),
    path("points/<uuid:point_id>/delete", views.point_delete, name="point-delete"),
    path("devices/", views.devices, name="devices"),
    path("devices/add", views.device_add, name="device-add"),
    path("devices/<uuid:device_id>/", views.device, name="device"),
    path("devices/<uuid:device_id>/update", views.device_update, name="device-update"),
    path("devices/<uuid:device_id>/revoke", views.device_revoke, name="device-revoke"),
    path("devices/<uuid:device_id>/enrollment-code", views.device_code, name="device-code"),
    path("devices/<uuid:device_id>/rotate", views.device_rotate, name="device-rotate"),
]
