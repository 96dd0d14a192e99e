"""The agent bundle: reproducible bytes, a manifest that matches, refusals like the installer's.

The wheels are tiny real wheels made here (nothing is downloaded); one test installs a bundle
with the edge's own installer and offline pip, so the two sides agree on the format.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from fieldlink.edge import slots
from fieldlink.updates.bundle import BundleError, build_bundle, collect_wheels, read_bundle


def make_wheel(directory: Path, name: str, version: str, body: str = "") -> Path:
    """A minimal valid pure-Python wheel (pip installs it)."""
    package = name.replace("-", "_")
    dist_info = f"{package}-{version}.dist-info"
    files = {
        f"{package}_probe/__init__.py": f"VERSION = {version!r}\n{body}",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: fieldlink-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            # Fixed times: the same wheel content gives the same wheel bytes.
            archive.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return wheel


def agent_wheels(directory: Path, version: str) -> list[Path]:
    return [
        make_wheel(directory, "fieldlink", version),
        make_wheel(directory, "tinydep", "0.3"),
    ]


def test_same_wheels_give_the_same_bundle_bytes(tmp_path: Path) -> None:
    first = agent_wheels(tmp_path / "a", "1.2.0")
    second = agent_wheels(tmp_path / "b", "1.2.0")
    os.utime(second[0], (1_000_000, 1_000_000))  # file times must not reach the bundle
    build_bundle("1.2.0", first, tmp_path / "one.tar")
    build_bundle("1.2.0", list(reversed(second)), tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_manifest_lists_every_wheel_with_its_hash_and_size(tmp_path: Path) -> None:
    wheels = agent_wheels(tmp_path / "w", "1.2.0")
    out = tmp_path / "fieldlink-agent-1.2.0.tar"
    built = build_bundle("1.2.0", wheels, out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
    assert names == [
        "manifest.json",
        "wheels/fieldlink-1.2.0-py3-none-any.whl",
        "wheels/tinydep-0.3-py3-none-any.whl",
    ]
    assert manifest["format"] == 1
    assert manifest["version"] == "1.2.0"
    assert manifest["entry"] == "fieldlink"
    assert manifest["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    by_name = {w.name: w for w in wheels}
    for entry in manifest["wheels"]:
        data = by_name[entry["name"]].read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
    assert read_bundle(out, version="1.2.0") == built


def test_bundle_without_the_matching_agent_wheel_refused(tmp_path: Path) -> None:
    wheels = agent_wheels(tmp_path / "w", "1.1.0")
    with pytest.raises(BundleError, match="not the bundle's"):
        build_bundle("1.2.0", wheels, tmp_path / "x.tar")
    with pytest.raises(BundleError, match="exactly one fieldlink wheel"):
        build_bundle("1.2.0", [make_wheel(tmp_path / "d", "tinydep", "1")], tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


def _rewrite(
    source: Path,
    target: Path,
    change: dict[str, bytes | None],
    extra: tarfile.TarInfo | None = None,
) -> None:
    """Copy a bundle member by member, replacing (or dropping, None) some members' data."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            file = old.extractfile(member)
            assert file is not None
            data = file.read()
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                data = replaced
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
        if extra is not None:
            new.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "fieldlink-agent-1.2.0.tar"
    build_bundle("1.2.0", agent_wheels(tmp_path / "w", "1.2.0"), out)
    return out


def test_tampered_wheel_in_bundle_refused(tmp_path: Path, bundle: Path) -> None:
    evil = make_wheel(tmp_path / "evil", "tinydep", "0.3", body="import os\n")
    tampered = tmp_path / "tampered.tar"
    _rewrite(bundle, tampered, {"wheels/tinydep-0.3-py3-none-any.whl": evil.read_bytes()})
    with pytest.raises(BundleError, match="does not match its manifest"):
        read_bundle(tampered)


def test_unlisted_wheel_smuggled_into_bundle_refused(tmp_path: Path, bundle: Path) -> None:
    extra = tarfile.TarInfo("wheels/extra-1-py3-none-any.whl")
    extra.size = 10
    smuggled = tmp_path / "smuggled.tar"
    _rewrite(bundle, smuggled, {}, extra)
    with pytest.raises(BundleError, match="unlisted"):
        read_bundle(smuggled)


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("../evil.whl", tarfile.REGTYPE, "leaves the bundle"),
        ("/etc/evil.whl", tarfile.REGTYPE, "absolute"),
        ("wheels/link.whl", tarfile.SYMTYPE, "link"),
        ("wheels/dev.whl", tarfile.CHRTYPE, "device"),
        ("setup.py", tarfile.REGTYPE, "unexpected bundle member"),
        ("wheels/tinydep-0.3-py3-none-any.whl", tarfile.REGTYPE, "appears twice"),
        ("manifest.json", tarfile.REGTYPE, "appears twice"),
    ],
)
def test_path_traversal_and_link_members_refused(
    tmp_path: Path, bundle: Path, name: str, kind: bytes, reason: str
) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind == tarfile.SYMTYPE:
        member.linkname = "/etc/passwd"
    elif kind == tarfile.REGTYPE:
        member.size = 4
    hostile = tmp_path / "hostile.tar"
    _rewrite(bundle, hostile, {}, member)
    with pytest.raises(BundleError, match=reason):
        read_bundle(hostile)


def test_bundle_of_another_version_refused(bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"expected '1\.3\.0'"):
        read_bundle(bundle, version="1.3.0")


def test_bundle_for_the_devices_python_is_read_on_another_python(tmp_path: Path) -> None:
    # The release machine need not run the devices' Python; the agent checks its own.
    out = tmp_path / "fieldlink-agent-1.2.0.tar"
    built = build_bundle("1.2.0", agent_wheels(tmp_path / "w", "1.2.0"), out, python="3.99")
    assert read_bundle(out, version="1.2.0") == built
    with pytest.raises(slots.BundleManifestError, match=r"Python 3\.99"):
        slots.install_bundle(out, tmp_path / "home", "1.2.0")


def test_bundle_over_the_agents_caps_refused(bundle: Path) -> None:
    small = slots.BundleLimits(max_member_bytes=100)
    with pytest.raises(BundleError, match="over the cap"):
        read_bundle(bundle, limits=small)


def test_not_a_tar_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 200)
    with pytest.raises(BundleError):
        read_bundle(junk)


def test_edge_installer_installs_a_built_bundle_offline(tmp_path: Path, bundle: Path) -> None:
    home = tmp_path / "home"
    slot = slots.install_bundle(bundle, home, "1.2.0")
    python = slots.slot_python(home, "1.2.0")
    done = subprocess.run(
        [
            str(python),
            "-c",
            "import fieldlink_probe, tinydep_probe; print(fieldlink_probe.VERSION)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "1.2.0"
    assert slot == slots.slot_dir(home, "1.2.0")


def test_collect_wheels_builds_the_project_wheel_offline(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src" / "tinyproj").mkdir(parents=True)
    (project / "src" / "tinyproj" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinyproj"\nversion = "2.0.1"\n'
    )
    requirements = tmp_path / "edge.txt"
    requirements.write_text("")
    found = collect_wheels(
        project,
        requirements,
        tmp_path / "out",
        pip_args=["--no-index"],
        build_isolation=False,
    )
    assert [p.name for p in found] == ["tinyproj-2.0.1-py3-none-any.whl"]
