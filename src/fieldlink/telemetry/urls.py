"""The operator's pages, under /orgs/<org_id>/assets/: asset list, asset page with live values."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.telemetry import views

app_name = "assets"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.asset_list, name="list"),
    path("<uuid:asset_id>/", views.asset_detail, name="detail"),
]
