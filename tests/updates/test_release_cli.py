"""``fieldlink updates keys`` and ``fieldlink release …`` end to end, on real files and the DB.

The cloud's online keys are made by the command, the workspace signs on disk, ``publish``
stores into the test database, and python-tuf's own client (a device) then downloads the
release through ``repository.read_metadata``/``open_target``. Every refusal is checked to leave
nothing published.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from fieldlink.audit.models import AuditEntry
from fieldlink.cli import main as cli
from fieldlink.updates import repository
from fieldlink.updates.models import Release, TufMetadata
from fieldlink.updates.workspace import PASSPHRASE_ENV, Workspace
from tests.updates.test_bundle import agent_wheels, make_wheel
from tests.updates.test_repository import _client

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


class Cli:
    """The ``fieldlink`` command, run in process against the test database."""

    def __init__(self, runner: CliRunner, passphrase: str, tmp: Path) -> None:
        self.runner = runner
        self.passphrase = passphrase
        self.tmp = tmp
        self.ws = tmp / "ws"

    def __call__(self, *args: str, passphrase: str | None = None, ok: bool = True) -> Result:
        result = self.runner.invoke(
            cli.app,
            list(args),
            env={PASSPHRASE_ENV: passphrase or self.passphrase},
            catch_exceptions=False,
        )
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def release(self, command: str, *args: str, ok: bool = True) -> Result:
        return self("release", command, "--workspace", str(self.ws), *args, ok=ok)

    def init(self, *args: str) -> None:
        keys = self("updates", "keys", "--create")
        online = self.tmp / "online.json"
        online.write_text(keys.stdout)
        self.release("init", "--online-keys", str(online), *args)

    def wheels(self, version: str, name: str = "w") -> str:
        directory = self.tmp / f"{name}-{version}"
        agent_wheels(directory, version)
        return str(directory)


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tmp_path: Path,
    canary: Callable[[str], str],
) -> Cli:
    settings.VAR_DIR = tmp_path / "var"
    # The command runs against the test database already set up; booting again would
    # reconfigure Django's logging in the middle of the test session.
    monkeypatch.setattr(cli, "_boot", lambda: None)
    return Cli(CliRunner(), canary("release-passphrase"), tmp_path)


def published_versions(role: str) -> list[int]:
    return sorted(TufMetadata.objects.filter(role=role).values_list("version", flat=True))


def test_updates_keys_prints_public_keys_only(run: Cli, settings: Any) -> None:
    missing = run("updates", "keys", ok=False)
    assert missing.exit_code == 1
    assert "--create" in missing.output
    keys = json.loads(run("updates", "keys", "--create").stdout)
    assert set(keys) == {"snapshot", "timestamp", "config"}
    assert "private" not in json.dumps(keys).lower()
    pem = (Path(settings.VAR_DIR) / "tuf" / "online" / "config.pem").read_text()
    body = "".join(pem.splitlines()[1:-1])
    assert body[:40] not in run("updates", "keys").output
    assert json.loads(run("updates", "keys").stdout) == keys  # stable: the same keys again


def test_release_is_published_and_a_device_downloads_it(run: Cli) -> None:
    run.init()
    ws = Workspace(run.ws)
    for path in ws.keys_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    added = run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    assert "release v2: 0 of 1 signatures — needs more signatures" in added.output
    signed = run.release("sign")
    assert "release v2: 1 of 1 signatures — ready to publish" in signed.output

    result = run.release("publish", "--actor", "ops@example.com")

    assert "published 2.release.json" in result.output
    assert "software 1.2.0: software/fieldlink-agent-1.2.0.tar" in result.output
    assert repository.read_metadata("timestamp.json") is not None
    assert [t.version for t in repository.software_releases()] == ["1.2.0"]
    assert Release.objects.get().version == "1.2.0"
    audit = AuditEntry.objects.get(action="release.published")
    assert audit.actor_label == "ops@example.com"

    device = _client(run.tmp / "device")
    device.refresh()
    info = device.get_targetinfo("software/fieldlink-agent-1.2.0.tar")
    assert info is not None
    downloaded = Path(device.download_target(info))
    assert downloaded.read_bytes() == ws.bundle_path("1.2.0").read_bytes()

    again = run.release("publish")
    assert "Nothing new to publish" in again.output


def test_release_below_threshold_refused(run: Cli) -> None:
    run.init("--release-keys", "3", "--release-threshold", "2")
    run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    one = run.release("sign", "--key", "release-1")
    assert "release v2: 1 of 2 signatures — needs more signatures" in one.output

    honest = run.release("publish")
    assert "not published (staged): release v2: 1 of 2 signatures" in honest.output
    assert published_versions("release") == [1]

    # A workspace that ignores its own threshold (edited by hand, or a bug) meets the cloud's.
    staged = json.loads((run.ws / "staged.json").read_text())["roles"]["release"]
    (run.ws / "metadata" / "2.release.json").write_bytes(Metadata.from_dict(staged).to_bytes())
    forced = run.release("publish", ok=False)
    assert forced.exit_code == 1
    assert "not signed by enough trusted keys" in forced.output
    assert published_versions("release") == [1]
    assert repository.software_releases() == []


def test_tampered_bundle_refused(run: Cli) -> None:
    run.init()
    run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    run.release("sign")
    bundle = Workspace(run.ws).bundle_path("1.2.0")
    original = bundle.read_bytes()
    # Same length, one wheel byte changed: only the hash can tell.
    position = original.index(b"PK\x03\x04") + 40
    bundle.write_bytes(
        original[:position] + bytes([original[position] ^ 1]) + original[position + 1 :]
    )

    result = run.release("publish", ok=False)

    assert result.exit_code == 1
    assert "SHA-256 is not the signed one" in result.output
    assert not repository.has_repository()  # nothing of the refused publication was stored
    assert not TufMetadata.objects.exists()


def test_swapped_bundle_with_other_length_refused(run: Cli) -> None:
    run.init()
    run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    run.release("sign")
    bundle = Workspace(run.ws).bundle_path("1.2.0")
    make_wheel(run.tmp / "evil", "fieldlink", "1.2.0", body="import os\nos.system('id')\n")
    shutil.copy(run.tmp / "evil" / "fieldlink-1.2.0-py3-none-any.whl", bundle)
    result = run.release("publish", ok=False)
    assert result.exit_code == 1
    assert "length is not the signed one" in result.output
    assert repository.software_releases() == []


def test_wrong_passphrase_refused(run: Cli) -> None:
    run.init()
    run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    wrong = "a wrong passphrase, long enough"
    result = run("release", "sign", "--workspace", str(run.ws), passphrase=wrong, ok=False)
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert wrong not in result.output
    assert "2.release.json" not in Workspace(run.ws).metadata_files()


def test_rotated_root_is_published_and_devices_follow_it(run: Cli) -> None:
    run.init()
    run.release("publish")
    device = _client(run.tmp / "device")
    device.refresh()

    rotated = run.release("rotate-root", "--new-keys", "2", "--threshold", "2")
    assert (
        "root v2: 2 of 2 signatures (new keys); 1 of 1 signatures of root v1's keys"
        in rotated.output
    )
    result = run.release("publish")

    assert "published 2.root.json" in result.output
    assert repository.read_metadata("2.root.json") is not None
    # The device walks from its pinned root 1 to root 2 (python-tuf checks both thresholds).
    _client(run.tmp / "device").refresh()
    trusted = Metadata.from_file(str(run.tmp / "device" / "client" / "metadata" / "root.json"))
    assert trusted.signed.version == 2

    # After the rotation, releases still publish (targets is verified against root 2).
    run.release("add", "--version", "1.2.0", "--wheels", run.wheels("1.2.0"))
    run.release("sign")
    run.release("publish")
    assert [t.version for t in repository.software_releases()] == ["1.2.0"]


def test_root_rotation_without_old_keys_refused(run: Cli) -> None:
    run.init()
    run.release("publish")
    # The old root key is not at hand: the new root is signed by the new keys only.
    (run.ws / "keys" / "root-1.pem").rename(run.tmp / "root-1.pem")
    staged = run.release("rotate-root", "--new-keys", "1", "--threshold", "1")
    assert "0 of 1 signatures of root v1's keys — needs more signatures" in staged.output
    assert "2.root.json" not in Workspace(run.ws).metadata_files()

    root = json.loads((run.ws / "staged.json").read_text())["roles"]["root"]
    (run.ws / "metadata" / "2.root.json").write_bytes(Metadata.from_dict(root).to_bytes())
    result = run.release("publish", ok=False)

    assert result.exit_code == 1
    assert "2.root.json (old keys): not signed by enough trusted keys" in result.output
    assert repository.read_metadata("2.root.json") is None
    assert published_versions("root") == [1]
