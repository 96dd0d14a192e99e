"""The cloud's database-backed TUF repository, checked with the real python-tuf client.

The client here reads through ``repository.read_metadata``/``open_target`` in process; the same
repository over real HTTPS with device credentials is tests/updates/test_tuf_serving.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from tuf.api.exceptions import DownloadHTTPError, RepositoryError
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from fieldlink.updates import repository, tuf_repo
from fieldlink.updates.errors import PublicationRefusedError, RepositoryMissingError
from fieldlink.updates.models import TufMetadata, TufTarget
from fieldlink.updates.workspace import parse_online_keys
from tests.telemetry.ingest_support import make_plant

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


class InProcessFetcher(FetcherInterface):
    """What the edge endpoint serves, without the network: names as in the URL."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        kind, _, name = url.removeprefix("https://cloud.test/").partition("/")
        if kind == "metadata":
            data = repository.read_metadata(name)
            if data is None:
                raise DownloadHTTPError(f"{name} not found", 404)
            return iter([data])
        blob = repository.open_target(name)
        if blob is None:
            raise DownloadHTTPError(f"{name} not found", 404)
        return blob.chunks()


@pytest.fixture
def var(settings: Any, tmp_path: Path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


def _bundle(tmp: Path, version: str, data: bytes) -> tuple[str, Path]:
    path = tmp / f"fieldlink-agent-{version}.tar"
    path.write_bytes(data)
    return tuf_repo.software_path(version), path


def _client(tmp: Path) -> Updater:
    """A device's client; a second one on the same directory keeps what the first trusted."""
    metadata = tmp / "client" / "metadata"
    if not metadata.exists():
        metadata.mkdir(parents=True)
        (tmp / "client" / "targets").mkdir()
        root = repository.read_metadata("1.root.json")
        assert root is not None
        (metadata / "root.json").write_bytes(root)
    return Updater(
        str(metadata),
        "https://cloud.test/metadata/",
        str(tmp / "client" / "targets"),
        "https://cloud.test/targets/",
        fetcher=InProcessFetcher(),
        config=UpdaterConfig(prefix_targets_with_hash=True),
        bootstrap=None,
    )


def _publish(
    repo: tuf_repo.Repository, bundles: dict[str, Path]
) -> list[repository.SoftwareTarget]:
    with transaction.atomic():
        return repository.publish(repo.files, bundles)


def test_nothing_is_signed_without_online_keys(var: Path) -> None:
    with pytest.raises(RepositoryMissingError):
        repository.online_signers()
    assert repository.refresh_online_metadata() == []


def test_online_keys_are_private_files(var: Path) -> None:
    public = repository.online_public_keys(create=True)
    assert set(public) == {"snapshot", "timestamp", "config"}
    assert all("private" not in str(entry) for entry in public.values())
    for role in public:
        assert (var / "tuf" / "online" / f"{role}.pem").stat().st_mode & 0o777 == 0o600
    assert (var / "tuf" / "online").stat().st_mode & 0o777 == 0o700
    assert parse_online_keys(public)["config"].keyid == public["config"]["keyid"]


def test_published_release_is_installable_by_the_real_client(var: Path) -> None:
    repo = tuf_repo.Repository.with_fresh_keys(repository.online_signers(create=True))
    data = b"bundle bytes" * 1000
    repo.add_software("1.4.0", data)
    path, bundle = _bundle(var, "1.4.0", data)

    published = _publish(repo, {path: bundle})

    assert [t.version for t in published] == ["1.4.0"]
    assert repository.has_repository()
    client = _client(var)
    client.refresh()
    info = client.get_targetinfo(path)
    assert info is not None
    assert info.custom == {"version": "1.4.0", "allow_downgrade": False}
    assert Path(client.download_target(info)).read_bytes() == data

    # A device configuration: signed online, found in its bin by the client.
    device = make_plant("cfg").device.pk
    with transaction.atomic():
        signed = repository.sign_device_config(device, b'{"format": 1}')
    assert signed.sha256 == hashlib.sha256(b'{"format": 1}').hexdigest()
    assert TufTarget.objects.get(path=signed.path).device_id == device
    client = _client(var / "second")
    client.refresh()
    config = client.get_targetinfo(f"config/{device}.json")
    assert config is not None
    assert Path(client.download_target(config)).read_bytes() == b'{"format": 1}'


@pytest.fixture
def published(var: Path) -> tuple[tuf_repo.Repository, Path]:
    repo = tuf_repo.Repository.with_fresh_keys(repository.online_signers(create=True))
    _publish(repo, {})
    return repo, var


def test_tampered_bundle_is_refused_and_nothing_is_stored(
    published: tuple[tuf_repo.Repository, Path],
) -> None:
    repo, var = published
    rows = TufMetadata.objects.count()
    repo.add_software("1.5.0", b"the signed bytes")
    path, bundle = _bundle(var, "1.5.0", b"the signed byteZ")
    with pytest.raises(PublicationRefusedError, match="SHA-256"):
        _publish(repo, {path: bundle})
    assert TufMetadata.objects.count() == rows
    assert not TufTarget.objects.exists()
    assert not list((var / "tuf").glob("targets/*"))


def test_bundle_of_another_length_is_refused(published: tuple[tuf_repo.Repository, Path]) -> None:
    repo, var = published
    repo.add_software("1.5.0", b"the signed bytes")
    path, bundle = _bundle(var, "1.5.0", b"the signed bytes and more")
    with pytest.raises(PublicationRefusedError, match="length"):
        _publish(repo, {path: bundle})


def test_missing_bundle_is_refused(published: tuple[tuf_repo.Repository, Path]) -> None:
    repo, _ = published
    repo.add_software("1.5.0", b"the signed bytes")
    with pytest.raises(PublicationRefusedError, match="missing"):
        _publish(repo, {})


def test_release_signed_by_an_attacker_is_refused(
    published: tuple[tuf_repo.Repository, Path],
) -> None:
    repo, var = published
    repo.stage_software("6.6.6", b"malware")
    repo.sign_role("release", signers=[tuf_repo.new_signer()])
    path, bundle = _bundle(var, "6.6.6", b"malware")
    with pytest.raises(PublicationRefusedError, match="not signed by enough"):
        _publish(repo, {path: bundle})
    assert repository.software_releases() == []


def test_refresh_resigns_timestamp_before_it_expires(
    published: tuple[tuf_repo.Repository, Path],
) -> None:
    before = repository.read_metadata("timestamp.json")
    now = datetime.now(UTC)
    with transaction.atomic():
        assert repository.refresh_online_metadata(now + timedelta(hours=1)) == []
    with transaction.atomic():
        signed = repository.refresh_online_metadata(now + timedelta(hours=13))
    after = repository.read_metadata("timestamp.json")
    assert after is not None
    assert after != before
    assert signed == ["timestamp.json"]


def test_metadata_names_outside_the_scheme_are_not_found(
    published: tuple[tuf_repo.Repository, Path],
) -> None:
    for name in ("../1.root.json", "root.json", "1.timestamp.json", "x.root.json", "1.nope.json"):
        assert repository.read_metadata(name) is None
    assert repository.open_target("software/notahash.fieldlink-agent-1.0.0.tar") is None


def test_client_refuses_a_repository_whose_timestamp_was_rolled_back(
    published: tuple[tuf_repo.Repository, Path],
) -> None:
    """Rollback on the server side (an old timestamp row served) is caught by the client."""
    _, var = published
    oldest = TufMetadata.objects.filter(role="timestamp").order_by("version").first()
    assert oldest is not None
    with transaction.atomic():
        repository.refresh_online_metadata(datetime.now(UTC) + timedelta(hours=13))
    _client(var).refresh()  # the device now trusts the newer timestamp
    TufMetadata.objects.filter(role="timestamp").exclude(pk=oldest.pk).delete()
    with pytest.raises(RepositoryError, match="version"):
        _client(var).refresh()
