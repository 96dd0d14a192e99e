"""Web pages of organisations: /orgs/… (members, settings, exports)."""

from django.urls import URLPattern, URLResolver, path

from fieldlink.accounts import views

app_name = "orgs"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.org_list, name="list"),
    path("<uuid:org_id>/", views.org_detail, name="detail"),
    path("<uuid:org_id>/members/", views.org_members, name="members"),
    path(
        "<uuid:org_id>/members/<uuid:membership_id>/role/",
        views.org_member_role,
        name="member-role",
    ),
    path(
        "<uuid:org_id>/members/<uuid:membership_id>/remove/",
        views.org_member_remove,
        name="member-remove",
    ),
    path(
        "<uuid:org_id>/members/<uuid:membership_id>/transfer/",
        views.org_member_transfer,
        name="member-transfer",
    ),
    path("<uuid:org_id>/invitations/", views.org_invite, name="invite"),
    path(
        "<uuid:org_id>/invitations/<uuid:invitation_id>/revoke/",
        views.org_invitation_revoke,
        name="invitation-revoke",
    ),
    path("<uuid:org_id>/settings/", views.org_settings, name="settings"),
    path("<uuid:org_id>/exports/", views.org_exports, name="exports"),
    path(
        "<uuid:org_id>/exports/<uuid:export_id>/download/",
        views.org_export_download,
        name="export-download",
    ),
]
