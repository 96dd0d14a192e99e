"""The cloud serving its TUF repository to devices: credentials, strict names, per-device configs.

One test runs the whole path for real: a ``fieldlink serve`` process over TLS, a release and a
configuration published into its database, and the agent's own ``EdgeUpdater`` (python-tuf
ngclient) verifying and downloading them with a device credential. The others drive the same
edge application in process, where every refusal can be checked precisely.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import transaction

from fieldlink.cloud.asgi import application
from fieldlink.edge.enroll import write_credential
from fieldlink.edge.updater import EdgeUpdater
from fieldlink.protocol.updates import TUF_METADATA_PATH, TUF_TARGETS_PATH
from fieldlink.updates import repository
from fieldlink.updates.models import Release, TufTarget
from fieldlink.updates.services import set_device_configuration
from tests.devices.conftest import Team
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer, run_server
from tests.updates.conftest import Publisher, enrolled
from tests.updates.test_reports import SOURCES

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]

METADATA = f"https://localhost{TUF_METADATA_PATH}"
TARGETS = f"https://localhost{TUF_TARGETS_PATH}"
BUNDLE = bytes(range(256)) * 3000  # 750 KiB: several chunks of 256 KiB


def get(url: str, token: str | None, *, method: str = "GET") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport) as client:
            headers = {} if token is None else {"authorization": f"Bearer {token}"}
            return await client.request(method, url, headers=headers)

    return asyncio.run(go())


def raw_get(path: str, token: str) -> int:
    """The status for ``path`` exactly as a server hands it over (decoded, not normalised).

    httpx removes dot segments before sending; an attacker's client does not.
    """
    scope = {
        "type": "http",
        "scheme": "https",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 443),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(application(scope, receive, send))  # type: ignore[arg-type]
    return int(sent[0]["status"])


def served(path: str, sha256: str) -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/{sha256}.{name}"


@pytest.fixture
def released(publisher: Publisher) -> Release:
    publisher.publish("1.2.0", BUNDLE)
    return Release.objects.get(version="1.2.0")


# -- in process


def test_metadata_is_served_to_an_enrolled_device(released: Release, team: Team) -> None:
    _, token = enrolled(team, "edge")
    reply = get(METADATA + "timestamp.json", token)
    assert reply.status_code == 200
    assert reply.content == repository.read_metadata("timestamp.json")
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert json.loads(reply.content)["signed"]["_type"] == "timestamp"
    root = get(METADATA + "1.root.json", token)
    assert root.status_code == 200
    assert json.loads(root.content)["signed"]["_type"] == "root"


def test_software_is_streamed_with_its_length(released: Release, team: Team) -> None:
    _, token = enrolled(team, "edge")
    reply = get(TARGETS + served(released.target_path, released.sha256), token)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    assert int(reply.headers["content-length"]) == len(BUNDLE)
    assert reply.content == BUNDLE


@pytest.mark.parametrize(
    "url",
    [
        METADATA + "timestamp.json",
        METADATA + "1.root.json",
        TARGETS + "software/" + "0" * 64 + ".fieldlink-agent-1.2.0.tar",
    ],
)
@pytest.mark.parametrize("token", [None, "fld_" + "0" * 43, "Basic abc"])
def test_repository_without_a_device_credential_is_401(
    released: Release, url: str, token: str | None
) -> None:
    reply = get(url, token)
    assert reply.status_code == 401
    assert reply.json()["code"] == "device_credential_invalid"


def test_revoked_device_cannot_download(released: Release, team: Team) -> None:
    device, token = enrolled(team, "edge")
    type(device).objects.filter(pk=device.pk).update(
        credential_digest="", revoked_at=device.created_at
    )
    assert get(METADATA + "timestamp.json", token).status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "../timestamp.json",
        "..%2Ftimestamp.json",
        "./timestamp.json",
        "/1.root.json",
        "1.root.json/../1.root.json",
        "metadata/1.root.json",
        "0.root.json",
        "01.root.json",
        "1.Root.json",
        "1.root.json.bak",
        "1.timestamp.json",
        "root.json",
        "1..json",
        "1." + "a" * 300 + ".json",
        "",
    ],
)
def test_path_traversal_and_odd_metadata_names_are_404(
    released: Release, team: Team, name: str
) -> None:
    _, token = enrolled(team, "edge")
    assert raw_get(TUF_METADATA_PATH + "1.root.json", token) == 200  # the door is open
    assert raw_get(TUF_METADATA_PATH + name, token) == 404, name


@pytest.mark.parametrize(
    "name",
    [
        "software/../config/x.json",
        "software/fieldlink-agent-1.2.0.tar",  # no hash prefix: consistent snapshots only
        "software/" + "A" * 64 + ".fieldlink-agent-1.2.0.tar",
        "software/" + "0" * 64 + "..tar",
        "other/" + "0" * 64 + ".x",
        "software/" + "0" * 64 + ".x" * 200,
    ],
)
def test_odd_target_names_are_404(released: Release, team: Team, name: str) -> None:
    _, token = enrolled(team, "edge")
    assert raw_get(TUF_TARGETS_PATH + name, token) == 404, name


def test_right_name_with_a_wrong_hash_is_404(released: Release, team: Team) -> None:
    _, token = enrolled(team, "edge")
    wrong = hashlib.sha256(b"other").hexdigest()
    assert get(TARGETS + served(released.target_path, wrong), token).status_code == 404


def test_repository_is_read_only(released: Release, team: Team) -> None:
    _, token = enrolled(team, "edge")
    for method in ("POST", "PUT", "DELETE"):
        reply = get(METADATA + "timestamp.json", token, method=method)
        assert reply.status_code == 405, method
        assert reply.headers["allow"] == "GET"
    assert repository.read_metadata("timestamp.json") is not None


def test_cross_device_config_download_is_404(released: Release, team: Team, rival: Team) -> None:
    mine, my_token = enrolled(team, "edge")
    _, neighbour_token = enrolled(team, "neighbour")
    _, foreign_token = enrolled(rival, "theirs")
    with transaction.atomic():
        config = set_device_configuration(team.scope(), mine.pk, SOURCES)
    url = TARGETS + served(config.target_path, config.sha256)
    reply = get(url, my_token)
    assert reply.status_code == 200
    assert reply.content == config.document.encode()
    for token in (neighbour_token, foreign_token):
        refused = get(url, token)
        assert refused.status_code == 404
        assert refused.json()["code"] == "not_found"
        assert config.document.encode() not in refused.content


def test_missing_bundle_file_is_not_served_as_an_empty_body(
    released: Release, team: Team, publisher: Publisher
) -> None:
    _, token = enrolled(team, "edge")
    row = TufTarget.objects.get(path=released.target_path)
    (publisher.var / "tuf" / "targets" / row.file).unlink()
    reply = get(TARGETS + served(released.target_path, released.sha256), token)
    assert reply.status_code == 503
    assert reply.json()["code"] == "target_unavailable"


# -- a real server, the real agent client

_PUBLISH = """
import json, sys
from pathlib import Path
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts import access, services as accounts
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import User
from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates import repository, services, tuf_repo

bundle, sources = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
repo = tuf_repo.Repository.with_fresh_keys(repository.online_signers(create=True))
path = repo.add_software("1.2.0", bundle.read_bytes())
actor = services.AuditActor.command("test")
with transaction.atomic():
    services.publish_release(repo.files, {path: bundle}, actor=actor)
with transaction.atomic():
    owner = User.objects.create(email="owner@tuf-serving.example")
    scope = accounts.create_organisation(
        Principal(owner, "session"), name="TUF serving", region="eu-central"
    )
    tokens = {}
    for name in ("edge", "neighbour"):
        device = EdgeDevice.objects.create(organisation=scope.organisation, name=name)
        code = credentials.issue_enrollment_code(device).secret
        with transaction.atomic():
            tokens[name] = (str(device.pk), credentials.enroll(code).secret)
    config = services.set_device_configuration(scope, tokens["edge"][0], sources)
print(json.dumps({"tokens": tokens, "config": config.document, "target": config.target_path,
                  "sha256": config.sha256}))
"""


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Its own cloud: a repository published into the shared test server would be the trust
    # root of every later test using that server.
    with run_server(tmp_path_factory.mktemp("tuf-serving")) as server:
        yield server


def test_agent_updater_verifies_and_downloads_over_real_https(
    own_server: RunningServer, tmp_path: Path
) -> None:
    server = own_server
    bundle = tmp_path / "fieldlink-agent-1.2.0.tar"
    bundle.write_bytes(BUNDLE)
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES)
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH, str(bundle), str(sources)],
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    made: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    device_id, token = made["tokens"]["edge"]
    _, neighbour = made["tokens"]["neighbour"]
    register_canary(token)
    register_canary(neighbour)

    home = tmp_path / "home"
    with server.client() as client:
        assert client.get(TUF_METADATA_PATH + "1.root.json").status_code == 401
        root = client.get(
            TUF_METADATA_PATH + "1.root.json", headers={"authorization": f"Bearer {token}"}
        )
        assert root.status_code == 200
        refused = client.get(
            TUF_TARGETS_PATH + served(made["target"], made["sha256"]),
            headers={"authorization": f"Bearer {neighbour}"},
        )
        assert refused.status_code == 404
    (home / "tuf" / "metadata").mkdir(parents=True)
    (home / "tuf" / "metadata" / "root.json").write_bytes(root.content)
    credential = home / "credential"
    write_credential(credential, token)

    updater = EdgeUpdater(
        server.base_url,
        home=home,
        ca_file=server.ca_cert,
        credential_file=credential,
        software_version="1.0.0",
    )
    updater.refresh()
    download = updater.fetch_software("1.2.0")
    assert download.path.read_bytes() == BUNDLE
    assert download.sha256 == hashlib.sha256(BUNDLE).hexdigest()
    assert updater.fetch_config(device_id) == made["config"].encode()
