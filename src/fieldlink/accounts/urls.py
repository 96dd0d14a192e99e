from django.urls import path

from fieldlink.accounts import views

app_name = "accounts"
urlpatterns = [
    path("", views.profile, name="profile"),
    path("api-keys/", views.api_keys, name="api-keys"),
    path("api-keys/<uuid:key_id>/revoke/", views.revoke_api_key, name="api-key-revoke"),
    path("api-keys/<uuid:key_id>/rotate/", views.rotate_api_key, name="api-key-rotate"),
    path("exports/", views.my_exports, name="exports"),
    path("exports/<uuid:export_id>/download/", views.my_export_download, name="export-download"),
]
