"""Data exports: an organisation's archive and a user's own, built in the background, expiring.

The build task runs through django-tasks' immediate backend when the request's transaction
commits (``django_capture_on_commit_callbacks(execute=True)``), so each test sees the real flow:
request → on_commit enqueue → task → archive on disk → download.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.db import transaction
from django.utils import timezone

from fieldlink.accounts import access, exports, services
from fieldlink.accounts.access import Principal, Scope
from fieldlink.accounts.exports import ArchiveWriter
from fieldlink.accounts.models import (
    ApiKeyScope,
    DataExport,
    ExportKind,
    ExportStatus,
    Invitation,
    Membership,
    Organisation,
    Role,
    SecurityEvent,
    SecurityEventKind,
    User,
)
from fieldlink.accounts.tasks import (
    build_data_export,
    expire_data_exports,
    purge_due_organisations,
)
from fieldlink.audit.models import GENESIS_HASH, AuditEntry
from fieldlink.audit.services import entry_hash
from tests.accounts.conftest import MakeClient, MakeUser, SecureClient, sign_in
from tests.plugins.log_canary import register_canary
from tests.support.server import subprocess_env

pytestmark = pytest.mark.django_db

Callbacks = Callable[..., AbstractContextManager[Any]]


@pytest.fixture(autouse=True)
def _exports_here(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    # The build runs in-process when enqueued, i.e. when the request's transaction commits.
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}


def _org(owner: User, name: str = "Acme Water") -> Organisation:
    with transaction.atomic():
        scope = services.create_organisation(
            Principal(owner, "session"), name=name, region="eu-central"
        )
    return scope.organisation


def _member(org: Organisation, user: User, role: Role) -> Membership:
    return Membership.objects.create(organisation=org, user=user, role=role)


def _key(user: User, scope: ApiKeyScope = ApiKeyScope.READ_WRITE) -> dict[str, str]:
    with transaction.atomic():
        issued = services.create_api_key(user, name="script", scope=scope)
    register_canary(issued.secret)
    return {"HTTP_AUTHORIZATION": f"Bearer {issued.secret}"}


@pytest.fixture
def team(make_user: MakeUser) -> dict[str, Any]:
    owner = make_user("owner@acme.example")
    admin = make_user("admin@acme.example")
    engineer = make_user("engineer@acme.example")
    viewer = make_user("viewer@acme.example")
    org = _org(owner)
    _member(org, admin, Role.ADMIN)
    _member(org, engineer, Role.ENGINEER)
    _member(org, viewer, Role.VIEWER)
    return {"org": org, "owner": owner, "admin": admin, "engineer": engineer, "viewer": viewer}


def _request_export(
    client: SecureClient, org: Organisation, auth: dict[str, str], kind: str = "complete"
) -> Any:
    return client.post(
        f"/api/v1/orgs/{org.pk}/exports",
        data={"kind": kind},
        content_type="application/json",
        **auth,
    )


def _built_export(
    client: SecureClient,
    org: Organisation,
    auth: dict[str, str],
    callbacks: Callbacks,
    kind: str = "complete",
) -> DataExport:
    with callbacks(execute=True):
        response = _request_export(client, org, auth, kind)
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    export = DataExport.objects.get(pk=response.json()["id"])
    assert export.status == ExportStatus.READY, export.error
    return export


def _members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _everything(archive: bytes) -> bytes:
    """The archive as stored plus every member uncompressed: where a secret could hide."""
    return archive + b"".join(_members(archive).values())


def _check_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(files["manifest.json"])
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for name, entry in listed.items():
        assert entry["size"] == len(files[name])
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest()
    return manifest


# -- The organisation's archive ------------------------------------------------------------------


@pytest.mark.backend
def test_complete_export_is_built_downloaded_and_checks_out(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, admin = team["org"], team["admin"]
    with transaction.atomic():
        owner_scope = _scope(team["owner"], org)
        invitation = services.invite_member(owner_scope, email="new@acme.example", role="viewer")
    register_canary(invitation.token)
    client = make_client()
    auth = _key(admin)

    export = _built_export(client, org, auth, django_capture_on_commit_callbacks)

    path = exports.archive_path(export.pk)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert export.expires_at == export.ready_at + timedelta(days=7)  # type: ignore[operator]
    detail = client.get(f"/api/v1/orgs/{org.pk}/exports/{export.pk}", **auth).json()
    assert detail["status"] == "ready"
    assert detail["sha256"] == export.sha256

    response = client.get(f"/api/v1/orgs/{org.pk}/exports/{export.pk}/download", **auth)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith("attachment;")
    assert "no-store" in response["Cache-Control"]
    archive = b"".join(response.streaming_content)
    assert hashlib.sha256(archive).hexdigest() == export.sha256 == _sha256(path)
    assert len(archive) == export.size

    files = _members(archive)
    manifest = _check_manifest(files)
    assert manifest["format_version"] == 1
    assert manifest["export_id"] == str(export.pk)
    assert manifest["kind"] == "complete"
    assert manifest["organisation"] == {
        "id": str(org.pk),
        "name": "Acme Water",
        "region": "eu-central",
    }
    assert manifest["created_at"].endswith("+00:00")
    assert {
        "organisation.json",
        "members.json",
        "invitations.json",
        "audit.jsonl",
        "measurements/index.json",
    } <= set(files)
    assert json.loads(files["organisation.json"])["name"] == "Acme Water"
    members = {m["email"]: m["role"] for m in json.loads(files["members.json"])}
    assert members == {
        "owner@acme.example": "owner",
        "admin@acme.example": "admin",
        "engineer@acme.example": "engineer",
        "viewer@acme.example": "viewer",
    }
    invitations = json.loads(files["invitations.json"])
    assert [(i["email"], i["status"]) for i in invitations] == [("new@acme.example", "pending")]
    assert json.loads(files["measurements/index.json"]) == []  # no measuring points yet

    # The audit trail re-hashes line by line and links into one unbroken chain.
    lines = [json.loads(line) for line in files["audit.jsonl"].decode().splitlines()]
    assert [line["sequence"] for line in lines] == list(range(1, len(lines) + 1))
    previous = GENESIS_HASH
    for line in lines:
        assert line["chain"] == str(org.pk)
        assert entry_hash(line) == line["hash"]
        assert line["prev_hash"] == previous
        previous = line["hash"]
    assert "export.requested" in {line["action"] for line in lines}

    downloaded = AuditEntry.objects.filter(chain=str(org.pk), action="export.downloaded")
    assert [e.actor_label for e in downloaded] == [
        f"{admin.email} ({admin.api_keys.get().prefix}…)"
    ]


def _scope(user: User, org: Organisation) -> Scope:
    return access.resolve(Principal(user, "session"), org.pk)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.backend
def test_measurements_only_export_has_only_measurements_and_manifest(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    client, auth = make_client(), _key(team["owner"])
    export = _built_export(
        client, team["org"], auth, django_capture_on_commit_callbacks, kind="measurements"
    )
    files = _members(exports.archive_path(export.pk).read_bytes())
    assert set(files) == {"manifest.json", "measurements/index.json"}
    assert _check_manifest(files)["kind"] == "measurements"


@pytest.fixture
def measurement_section() -> Iterator[None]:
    def write(scope: Scope, out: ArchiveWriter) -> None:
        out.write_bytes("measurements/points.csv", f"org,{scope.organisation.pk}\n".encode())

    exports.register_export_section(
        "test-measurements", [ExportKind.COMPLETE, ExportKind.MEASUREMENTS], write
    )
    yield
    exports._SECTIONS[:] = [s for s in exports._SECTIONS if s.name != "test-measurements"]


def test_registered_measurement_section_is_exported_in_both_kinds(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
    measurement_section: None,
) -> None:
    client, auth = make_client(), _key(team["owner"])
    export = _built_export(
        client, team["org"], auth, django_capture_on_commit_callbacks, kind="measurements"
    )
    files = _members(exports.archive_path(export.pk).read_bytes())
    assert set(files) == {"manifest.json", "measurements/index.json", "measurements/points.csv"}
    assert files["measurements/points.csv"] == f"org,{team['org'].pk}\n".encode()


def test_archive_member_names_cannot_escape_the_folder() -> None:
    with zipfile.ZipFile(io.BytesIO(), "w") as zf:
        writer = ArchiveWriter(zf)
        for bad in ("../x", "/etc/passwd", "a/../../b", "manifest.json", "a//b", "a\\b", ""):
            with pytest.raises(ValueError, match="archive member"):
                writer.write_bytes(bad, b"x")
        writer.write_bytes("measurements/ok.csv", b"x")
        with pytest.raises(ValueError, match="twice"):
            writer.write_bytes("measurements/ok.csv", b"x")


# -- Who may -------------------------------------------------------------------------------------


@pytest.mark.backend
@pytest.mark.parametrize("role", ["engineer", "viewer"])
def test_engineer_and_viewer_cannot_request_list_or_download_exports(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
    role: str,
) -> None:
    org, client = team["org"], make_client()
    export = _built_export(client, org, _key(team["admin"]), django_capture_on_commit_callbacks)
    auth = _key(team[role])
    assert _request_export(client, org, auth).status_code == 403
    assert client.get(f"/api/v1/orgs/{org.pk}/exports", **auth).status_code == 403
    response = client.get(f"/api/v1/orgs/{org.pk}/exports/{export.pk}/download", **auth)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert DataExport.objects.count() == 1


def test_read_only_api_key_cannot_request_an_export(
    team: dict[str, Any], make_client: MakeClient
) -> None:
    auth = _key(team["owner"], ApiKeyScope.READ)
    assert _request_export(make_client(), team["org"], auth).status_code == 403
    assert not DataExport.objects.exists()


@pytest.mark.backend
def test_cross_tenant_export_download_is_404(
    team: dict[str, Any],
    make_user: MakeUser,
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, client = team["org"], make_client()
    export = _built_export(client, org, _key(team["owner"]), django_capture_on_commit_callbacks)
    rival = make_user("owner@rival.example")
    rival_org = _org(rival, "Rival Ltd")
    auth = _key(rival)
    for url in (
        f"/api/v1/orgs/{org.pk}/exports/{export.pk}/download",
        f"/api/v1/orgs/{org.pk}/exports/{export.pk}",
        f"/api/v1/orgs/{org.pk}/exports",
        # Their own organisation in the path does not reach our export either.
        f"/api/v1/orgs/{rival_org.pk}/exports/{export.pk}/download",
        f"/api/v1/orgs/{rival_org.pk}/exports/{export.pk}",
    ):
        response = client.get(url, **auth)
        assert response.status_code == 404, url
        assert b"Acme" not in response.content
    web = make_client()
    sign_in(web, rival.email)
    page = web.get(f"/orgs/{org.pk}/exports/{export.pk}/download/")
    assert page.status_code == 404
    assert b"Acme" not in page.content
    assert not AuditEntry.objects.filter(action="export.downloaded").exists()


# -- Limits and expiry ---------------------------------------------------------------------------


@pytest.mark.backend
def test_one_pending_export_at_a_time(team: dict[str, Any], make_client: MakeClient) -> None:
    client, auth = make_client(), _key(team["admin"])
    # The build is never enqueued here (no commit callbacks run): the first stays pending.
    assert _request_export(client, team["org"], auth).status_code == 202
    second = _request_export(client, team["org"], auth, "measurements")
    assert second.status_code == 409
    assert second.json()["code"] == "export_in_progress"
    assert DataExport.objects.count() == 1


def test_daily_export_limit(team: dict[str, Any], make_client: MakeClient) -> None:
    org = team["org"]
    for _ in range(exports.MAX_EXPORTS_PER_DAY):
        DataExport.objects.create(
            organisation=org, requested_by=team["owner"], kind="complete", status="ready"
        )
    response = _request_export(make_client(), org, _key(team["admin"]))
    assert response.status_code == 429
    assert response.json()["code"] == "export_limit"
    assert 0 < int(response["Retry-After"]) <= 86401


@pytest.mark.backend
def test_expired_export_is_refused_and_clean_up_deletes_its_file(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, client, auth = team["org"], make_client(), _key(team["admin"])
    export = _built_export(client, org, auth, django_capture_on_commit_callbacks)
    path = exports.archive_path(export.pk)
    DataExport.objects.filter(pk=export.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    refused = client.get(f"/api/v1/orgs/{org.pk}/exports/{export.pk}/download", **auth)
    assert refused.status_code == 409
    assert refused.json()["code"] == "export_unavailable"
    assert refused.json()["details"]["status"] == "expired"
    assert path.exists()  # refused as soon as the time is up, whether cleaned up yet or not

    assert expire_data_exports.call() == 1
    export.refresh_from_db()
    assert export.status == ExportStatus.EXPIRED
    assert not path.exists()
    listed = client.get(f"/api/v1/orgs/{org.pk}/exports", **auth).json()
    assert [e["status"] for e in listed] == ["expired"]


def test_stale_pending_export_is_given_up(team: dict[str, Any], make_client: MakeClient) -> None:
    client, auth = make_client(), _key(team["admin"])
    assert _request_export(client, team["org"], auth).status_code == 202
    DataExport.objects.update(created_at=timezone.now() - timedelta(hours=7))
    assert expire_data_exports.call() == 1
    assert DataExport.objects.get().status == ExportStatus.FAILED
    assert _request_export(client, team["org"], auth).status_code == 202


@pytest.mark.backend
def test_organisation_purge_deletes_export_files(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, client = team["org"], make_client()
    export = _built_export(client, org, _key(team["owner"]), django_capture_on_commit_callbacks)
    path = exports.archive_path(export.pk)
    with transaction.atomic():
        services.request_deletion(_scope(team["owner"], org))
    Organisation.objects.filter(pk=org.pk).update(deletion_due_at=timezone.now())
    assert path.exists()
    assert purge_due_organisations.call() == 1
    assert not path.exists()
    assert not DataExport.objects.filter(pk=export.pk).exists()


def test_purge_hook_is_registered_where_the_purge_task_runs() -> None:
    # A fresh interpreter, as the worker is: importing the task module alone must register it.
    code = (
        "import django; django.setup();"
        "from fieldlink.accounts import tasks, services;"
        "print([h.__qualname__ for h in services.ORGANISATION_PURGE_HOOKS])"
    )
    result = subprocess.run(  # our own interpreter, fixed arguments
        [sys.executable, "-c", code],
        env=subprocess_env(DJANGO_SETTINGS_MODULE="fieldlink.cloud.django_settings"),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "_remove_organisation_files" in result.stdout


@pytest.mark.backend
def test_export_allowed_while_deletion_is_pending(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org = team["org"]
    with transaction.atomic():
        services.request_deletion(_scope(team["owner"], org))
    export = _built_export(
        make_client(), org, _key(team["admin"]), django_capture_on_commit_callbacks
    )
    assert export.status == ExportStatus.READY


# -- Failures ------------------------------------------------------------------------------------


@pytest.fixture
def broken_section() -> Iterator[None]:
    def write(scope: Scope, out: ArchiveWriter) -> None:
        with out.open("measurements/half.csv") as f:
            f.write(b"a,b\n")
            raise RuntimeError("internal detail /srv/secret-path")

    exports.register_export_section("test-broken", [ExportKind.MEASUREMENTS], write)
    yield
    exports._SECTIONS[:] = [s for s in exports._SECTIONS if s.name != "test-broken"]


def test_failed_build_is_marked_failed_without_internals_and_leaves_no_file(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
    broken_section: None,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = _request_export(make_client(), team["org"], _key(team["admin"]), "measurements")
    export = DataExport.objects.get(pk=response.json()["id"])
    assert export.status == ExportStatus.FAILED
    assert export.error
    assert "secret-path" not in export.error
    assert "Traceback" not in export.error
    assert list((Path(exports.archive_path(export.pk)).parent).iterdir()) == []


def test_requester_demoted_before_the_build_gets_no_archive(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, admin = team["org"], team["admin"]
    response = _request_export(make_client(), org, _key(admin))
    Membership.objects.filter(user=admin).update(role=Role.VIEWER)
    assert build_data_export.call(response.json()["id"]) == "failed"
    export = DataExport.objects.get()
    assert export.status == ExportStatus.FAILED
    assert "no longer" in export.error
    assert not exports.archive_path(export.pk).exists()


# -- Pages ---------------------------------------------------------------------------------------


@pytest.mark.backend
def test_export_page_requests_lists_and_downloads(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    org, web = team["org"], make_client()
    sign_in(web, team["admin"].email)
    page = web.get(f"/orgs/{org.pk}/exports/")
    assert page.status_code == 200
    assert b"No exports yet" in page.content
    with django_capture_on_commit_callbacks(execute=True):
        posted = web.post(f"/orgs/{org.pk}/exports/", {"kind": "measurements"})
    assert posted.status_code == 302
    export = DataExport.objects.get()
    assert (export.kind, export.status) == ("measurements", "ready")
    page = web.get(f"/orgs/{org.pk}/exports/")
    link = f"/orgs/{org.pk}/exports/{export.pk}/download/"
    assert link.encode() in page.content
    download = web.get(link)
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    assert "no-store" in download["Cache-Control"]
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == export.sha256

    again = web.post(f"/orgs/{org.pk}/exports/", {"kind": "nonsense"})
    assert again.status_code == 422
    assert b"Unknown export kind" in again.content


def test_export_page_is_403_for_an_engineer(team: dict[str, Any], make_client: MakeClient) -> None:
    web = make_client()
    sign_in(web, team["engineer"].email)
    assert web.get(f"/orgs/{team['org'].pk}/exports/").status_code == 403
    assert web.post(f"/orgs/{team['org'].pk}/exports/", {"kind": "complete"}).status_code == 403
    assert not DataExport.objects.exists()


# -- A user's own data ---------------------------------------------------------------------------


@pytest.mark.backend
def test_personal_export_has_the_users_data_and_no_secrets(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    admin, client = team["admin"], make_client()
    auth = _key(admin)
    key_secret = auth["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    totp_secret = register_canary(generate_totp_secret())
    TOTP.activate(admin, totp_secret)
    with transaction.atomic():
        invitation = services.invite_member(
            _scope(team["owner"], team["org"]), email="friend@acme.example", role="viewer"
        )
    register_canary(invitation.token)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/me/exports", **auth)
    assert response.status_code == 202
    export = DataExport.objects.get(pk=response.json()["id"])
    assert export.status == ExportStatus.READY
    assert export.organisation_id is None
    download = client.get(f"/api/v1/me/exports/{export.pk}/download", **auth)
    assert download.status_code == 200
    assert "no-store" in download["Cache-Control"]
    archive = b"".join(download.streaming_content)

    files = _members(archive)
    manifest = _check_manifest(files)
    assert manifest["user"] == {"id": str(admin.pk), "email": admin.email}
    assert "organisation" not in manifest
    assert json.loads(files["profile.json"])["email"] == admin.email
    assert [a["email"] for a in json.loads(files["email_addresses.json"])] == [admin.email]
    assert [(m["organisation_name"], m["role"]) for m in json.loads(files["memberships.json"])] == [
        ("Acme Water", "admin")
    ]
    assert [k["prefix"] for k in json.loads(files["api_keys.json"])] == [
        admin.api_keys.get().prefix
    ]
    assert [f["type"] for f in json.loads(files["second_factors.json"])] == ["totp"]
    kinds = [json.loads(line)["kind"] for line in files["security_history.jsonl"].splitlines()]
    assert SecurityEventKind.API_KEY_CREATED in kinds
    assert SecurityEventKind.DATA_EXPORT_REQUESTED in kinds

    everything = _everything(archive)
    admin.refresh_from_db()
    secrets = {
        "API key": key_secret,
        "API key digest": admin.api_keys.get().digest,
        "password hash": admin.password,
        "password hash body": admin.password.split("$")[-1],
        "TOTP secret": totp_secret,
        "invitation token": invitation.token,
        "invitation digest": Invitation.objects.get().digest,
    }
    for what, secret in secrets.items():
        assert secret.encode() not in everything, what
    # Nothing of this user's organisation beyond the membership itself.
    assert not [name for name in files if "audit" in name]
    assert SecurityEvent.objects.filter(
        user=admin, kind=SecurityEventKind.DATA_EXPORT_DOWNLOADED
    ).exists()
    # A personal export is nobody's organisation business: nothing in any organisation's trail.
    assert not AuditEntry.objects.filter(action__startswith="export.").exists()


@pytest.mark.backend
def test_organisation_archive_holds_no_secrets(
    team: dict[str, Any],
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    owner, client = team["owner"], make_client()
    auth = _key(owner)
    TOTP.activate(owner, totp_secret := register_canary(generate_totp_secret()))
    with transaction.atomic():
        invitation = services.invite_member(
            _scope(owner, team["org"]), email="new@acme.example", role="viewer"
        )
    register_canary(invitation.token)
    export = _built_export(client, team["org"], auth, django_capture_on_commit_callbacks)
    everything = _everything(exports.archive_path(export.pk).read_bytes())
    owner.refresh_from_db()
    for what, secret in {
        "API key": auth["HTTP_AUTHORIZATION"].removeprefix("Bearer "),
        "API key digest": owner.api_keys.get().digest,
        "password hash body": owner.password.split("$")[-1],
        "TOTP secret": totp_secret,
        "invitation token": invitation.token,
        "invitation digest": Invitation.objects.get().digest,
    }.items():
        assert secret.encode() not in everything, what


def test_another_users_personal_export_is_404(
    make_user: MakeUser,
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    alice, mallory = make_user("alice@example.com"), make_user("mallory@example.com")
    client = make_client()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/me/exports", **_key(alice))
    export_id = response.json()["id"]
    assert DataExport.objects.get(pk=export_id).status == ExportStatus.READY
    auth = _key(mallory)
    for url in (f"/api/v1/me/exports/{export_id}", f"/api/v1/me/exports/{export_id}/download"):
        assert client.get(url, **auth).status_code == 404, url
    assert client.get("/api/v1/me/exports", **auth).json() == []
    web = make_client()
    sign_in(web, mallory.email)
    assert web.get(f"/me/exports/{export_id}/download/").status_code == 404
    assert b"alice" not in web.get("/me/exports/").content


def test_personal_export_page_requests_and_downloads(
    make_user: MakeUser,
    make_client: MakeClient,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    user, web = make_user("pat@example.com"), make_client()
    sign_in(web, user.email)
    with django_capture_on_commit_callbacks(execute=True):
        assert web.post("/me/exports/").status_code == 302
    export = DataExport.objects.get()
    page = web.get("/me/exports/")
    assert page.status_code == 200
    link = f"/me/exports/{export.pk}/download/"
    assert link.encode() in page.content
    download = web.get(link)
    assert download.status_code == 200
    assert download["Content-Type"] == "application/zip"
    assert "profile.json" in _members(b"".join(download.streaming_content))
    # A second request while one is pending is refused on the page, not with a 500.
    DataExport.objects.update(status=ExportStatus.PENDING)
    refused = web.post("/me/exports/")
    assert refused.status_code == 409
    assert b"already being prepared" in refused.content
