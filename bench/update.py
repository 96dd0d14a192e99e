"""Signed-update benchmark: a rollout to 100 simulated devices, and the cost of verification.

Everything runs on this machine, on 127.0.0.1 only, with the project's real components:

  rollout  a real ``fieldlink serve`` (HTTPS, throw-away var dir, SQLite file) with its online
           keys; an offline-signed repository (root, targets, release: ``tuf_repo``, as
           ``fieldlink release`` makes it) holding a ``--bundle-mb`` agent bundle; ``--devices``
           enrolled devices, each a thread with its own home, the root pinned at enrollment and
           the agent's real ``EdgeUpdater`` (python-tuf ngclient over HTTPS with its credential).
           The clock starts when publishing starts (``services.publish_release`` and a one-wave
           rollout to every device, in one script against the server's database); each device
           reports every ``--poll`` seconds (±50 % jitter), is told ``update_available``,
           downloads and verifies the bundle through TUF and reports the new version running;
           the clock stops when the cloud counts every device of the rollout as succeeded.
           Installing (a venv per slot) and restarting are not part of it: they are local to
           each device and measured by the edge tests, not the fleet.
           Reference, same run, same devices and threads: a plain HTTPS GET of the same bundle
           per device (no TUF, no verification).
  verify   one ``--target-mb`` target (random bytes): python-tuf's ``download_target`` from a
           local fetcher (length + SHA-256 checked while it streams to the target directory),
           and ``TargetFile.verify_length_and_hashes`` alone, against ``sha256sum`` of the same
           file; interleaved, ``--rounds`` times, medians.

    .venv/bin/python bench/update.py [--quick] [--only rollout,verify]

``--quick`` (20 devices, 2 MB bundle, 20 MB target) finishes in under a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
from securesystemslib.signer import SSlibKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server import RunningServer  # noqa: E402

from _telemetry_support import django_script, fieldlink_server, machine  # noqa: E402
from fieldlink.edge.enroll import tls_context, write_credential  # noqa: E402
from fieldlink.edge.updater import EdgeUpdater  # noqa: E402
from fieldlink.protocol.updates import REPORT_PATH, DeviceReport, ReportAck  # noqa: E402
from fieldlink.updates import tuf_repo  # noqa: E402

OLD, NEW = "1.0.0", "1.0.1"

# In the server's database: the online keys, an organisation and its enrolled devices.
_SETUP = """
import json, sys
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates import repository
count = int(sys.stdin.read())
keys = repository.online_public_keys(create=True)
devices = []
with transaction.atomic():
    org = Organisation.objects.create(name="Bench updates", region=Region.EU_CENTRAL)
    for i in range(count):
        device = EdgeDevice.objects.create(organisation=org, name=f"bench-{i:04d}")
        code = credentials.issue_enrollment_code(device).secret
        devices.append({"id": str(device.pk), "token": credentials.enroll(code).secret})
print(json.dumps({"org": str(org.pk), "keys": keys, "devices": devices}))
"""

# Publish the offline-signed files and roll the release out to every device in one wave.
_PUBLISH = """
import json, sys
from pathlib import Path
from django.db import transaction
from fieldlink.accounts.access import ROLE_PERMISSIONS, Principal, Scope
from fieldlink.accounts.models import Organisation, Role, User
from fieldlink.updates import services
job = json.loads(sys.stdin.read())
owner = User.objects.create(email="bench-owner@example.com")
files = {name: Path(path).read_bytes() for name, path in job["files"].items()}
bundles = {name: Path(path) for name, path in job["bundles"].items()}
with transaction.atomic():
    services.publish_release(files, bundles, actor=services.AuditActor.command("bench"))
with transaction.atomic():
    scope = Scope(
        Principal(owner, "session"),
        Organisation.objects.get(pk=job["org"]),
        ROLE_PERMISSIONS[Role.OWNER],
        role=Role.OWNER,
    )
    rollout = services.create_rollout(
        scope, version=job["version"], device_ids=job["devices"], waves=[100],
        failure_threshold_pct=100,
    )
print(json.dumps({"rollout": str(rollout.pk)}))
"""

_PROGRESS = """
import json, sys
from fieldlink.updates.models import RolloutDevice
rollout = sys.stdin.read()
states = list(RolloutDevice.objects.filter(rollout_id=rollout).values_list("state", flat=True))
print(json.dumps({s: states.count(s) for s in set(states)}))
"""


def offline_repository(keys: dict[str, Any], bundle: bytes, directory: Path) -> dict[str, Any]:
    online = {
        role: SSlibKey.from_dict(entry["keyid"], {k: v for k, v in entry.items() if k != "keyid"})
        for role, entry in keys.items()
    }
    repo = tuf_repo.Repository.with_fresh_keys(online)
    repo.add_software(NEW, bundle)
    files = {}
    for name, data in repo.files.items():
        (directory / name).write_bytes(data)
        files[name] = str(directory / name)
    bundle_file = directory / f"fieldlink-agent-{NEW}.tar"
    bundle_file.write_bytes(bundle)
    sha256 = hashlib.sha256(bundle).hexdigest()
    return {
        "files": files,
        "bundles": {tuf_repo.software_path(NEW): str(bundle_file)},
        "root": repo.files["1.root.json"],
        "served": tuf_repo.served_target_name(tuf_repo.software_path(NEW), sha256),
    }


class Device:
    def __init__(self, server: RunningServer, home: Path, entry: dict[str, str], root: bytes):
        self.id = entry["id"]
        self.home = home
        credential = home / "credential"
        write_credential(credential, entry["token"])
        (home / "tuf" / "metadata").mkdir(parents=True)
        (home / "tuf" / "metadata" / "root.json").write_bytes(root)
        self.token = entry["token"]
        self.server = server
        self.updater = EdgeUpdater(
            server.base_url,
            home=home,
            ca_file=server.ca_cert,
            credential_file=credential,
            software_version=OLD,
        )

    def report(self, client: httpx.Client, version: str, state: str = "") -> ReportAck:
        body = msgspec.json.encode(DeviceReport(software_version=version, update_state=state))
        response = client.post(
            self.server.base_url + REPORT_PATH,
            content=body,
            headers={"authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=ReportAck)

    def run(self, client: httpx.Client, poll: float, deadline: float) -> float:
        """Report until told to update, fetch and verify, report running; seconds spent."""
        while time.monotonic() < deadline:
            ack = self.report(client, OLD)
            if ack.update_available == NEW:
                started = time.monotonic()
                download = self.updater.fetch_software(NEW)
                self.updater.discard(download)
                self.report(client, NEW, "running")
                return time.monotonic() - started
            time.sleep(poll * random.uniform(0.5, 1.5))
        raise TimeoutError(f"device {self.id} was never told to update")


def bench_rollout(server: RunningServer, directory: Path, args: argparse.Namespace) -> None:
    made = django_script(server, _SETUP, str(args.devices))
    bundle = os.urandom(args.bundle_mb * 1024 * 1024)
    workspace = directory / "workspace"
    workspace.mkdir()
    job = offline_repository(made["keys"], bundle, workspace)
    devices = [
        Device(server, directory / "devices" / f"d{i:04d}", entry, job["root"])
        for i, entry in enumerate(made["devices"])
    ]
    print(f"\nrollout: {len(devices)} devices, bundle {args.bundle_mb} MB, poll {args.poll} s")
    client = httpx.Client(
        verify=tls_context(server.ca_cert),
        trust_env=False,
        timeout=60,
        limits=httpx.Limits(max_connections=args.threads),
    )
    deadline = time.monotonic() + args.deadline
    started = time.monotonic()
    published = django_script(
        server,
        _PUBLISH,
        msgspec.json.encode(
            {
                **job,
                "root": None,
                "org": made["org"],
                "version": NEW,
                "devices": [d["id"] for d in made["devices"]],
            }
        ).decode(),
    )
    publish_s = time.monotonic() - started
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        per_device = list(pool.map(lambda d: d.run(client, args.poll, deadline), devices))
    devices_done = time.monotonic() - started
    progress = django_script(server, _PROGRESS, published["rollout"])
    total = time.monotonic() - started
    if progress.get("succeeded") != len(devices):
        raise SystemExit(f"rollout incomplete: {progress}")

    # Reference: the same bundle over plain HTTPS, no TUF, same devices and threads.
    url = f"{server.base_url}/edge/v1/tuf/targets/{job['served']}"

    def plain(device: Device) -> None:
        response = client.get(url, headers={"authorization": f"Bearer {device.token}"})
        response.raise_for_status()
        if len(response.content) != len(bundle):
            raise SystemExit("plain download: wrong length")

    plain_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        list(pool.map(plain, devices))
    plain_s = time.monotonic() - plain_started
    client.close()
    print(f"  publish + rollout created      {publish_s:6.2f} s  (a script: Django boot included)")
    print(f"  publish → all devices verified {devices_done:6.2f} s")
    print(f"  publish → cloud counts all     {total:6.2f} s  ({progress})")
    print(
        f"  per device: fetch+verify median {statistics.median(per_device) * 1000:.0f} ms, "
        f"max {max(per_device) * 1000:.0f} ms"
    )
    print(f"  reference: plain HTTPS GET of the bundle by every device {plain_s:6.2f} s")
    print(
        f"  ratio (TUF fetch+verify phase / plain download): "
        f"{(devices_done - publish_s) / plain_s:.2f}x (includes poll waits of ~{args.poll} s)"
    )


# -- verification cost --------------------------------------------------------------------------


def _random_file(path: Path, megabytes: int) -> None:
    with path.open("wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1024 * 1024))


def bench_verify(directory: Path, args: argparse.Namespace) -> None:
    from tuf.api.exceptions import DownloadHTTPError  # noqa: PLC0415
    from tuf.api.metadata import TargetFile  # noqa: PLC0415
    from tuf.ngclient import Updater, UpdaterConfig  # noqa: PLC0415
    from tuf.ngclient.fetcher import FetcherInterface  # noqa: PLC0415

    source = directory / "target.bin"
    _random_file(source, args.target_mb)
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    signers = [tuf_repo.new_signer() for _ in range(6)]
    repo = tuf_repo.Repository.create(
        root=[signers[0]],
        targets=[signers[1]],
        release=[signers[2]],
        snapshot=signers[3],
        timestamp=signers[4],
        config=signers[5],
        bin_bits=4,
    )
    path = tuf_repo.software_path(NEW)
    repo.stage_software(NEW, b"")
    target = TargetFile(
        length=source.stat().st_size,
        hashes={"sha256": digest.hexdigest()},
        path=path,
        unrecognized_fields={"custom": {"version": NEW, "allow_downgrade": False}},
    )
    repo.md["release"].signed.targets[path] = target
    repo.targets_data.clear()
    repo.sign_role("release")
    repo.snapshot_and_timestamp()
    served = directory / "served"
    repo.write(served)

    class LocalFetcher(FetcherInterface):
        def _fetch(self, url: str) -> Iterator[bytes]:
            name = url.split("/", 3)[3]
            if name.startswith("targets/"):
                return _chunks(source)
            if not (served / name).exists():
                raise DownloadHTTPError(name, 404)
            return iter([(served / name).read_bytes()])

    def tuf_download() -> None:
        client = directory / "client"
        shutil.rmtree(client, ignore_errors=True)
        (client / "metadata").mkdir(parents=True)
        (client / "targets").mkdir()
        (client / "metadata" / "root.json").write_bytes(repo.files["1.root.json"])
        updater = Updater(
            str(client / "metadata"),
            "https://x/metadata/",
            str(client / "targets"),
            "https://x/targets/",
            fetcher=LocalFetcher(),
            config=UpdaterConfig(prefix_targets_with_hash=True),
            bootstrap=None,
        )
        updater.refresh()
        info = updater.get_targetinfo(path)
        assert info is not None
        Path(updater.download_target(info)).unlink()

    def verify_only() -> None:
        with source.open("rb") as handle:
            target.verify_length_and_hashes(handle)

    def sha256sum() -> None:
        tool = shutil.which("sha256sum") or "/usr/bin/sha256sum"
        subprocess.run([tool, str(source)], check=True, capture_output=True, timeout=120)

    runs: dict[str, list[float]] = {"sha256sum": [], "verify": [], "tuf download": []}
    for _ in range(args.rounds):
        for name, work in (
            ("sha256sum", sha256sum),
            ("verify", verify_only),
            ("tuf download", tuf_download),
        ):
            started = time.perf_counter()
            work()
            runs[name].append(time.perf_counter() - started)
    base = statistics.median(runs["sha256sum"])
    print(f"\nverify: one {args.target_mb} MB target, {args.rounds} interleaved rounds, medians")
    for name, times in runs.items():
        median = statistics.median(times)
        print(
            f"  {name:<13} {median * 1000:8.0f} ms  {args.target_mb / median:7.0f} MB/s  "
            f"{median / base:5.2f}x sha256sum"
        )


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(256 * 1024):
            yield chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--only", default="rollout,verify", help="comma-separated phases")
    parser.add_argument("--devices", type=int, help="simulated devices (100)")
    parser.add_argument("--threads", type=int, default=16, help="devices working at once")
    parser.add_argument("--bundle-mb", type=int, help="agent bundle size (20)")
    parser.add_argument("--poll", type=float, default=2.0, help="device report interval, s")
    parser.add_argument("--target-mb", type=int, help="verify phase target size (100)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the rollout")
    args = parser.parse_args()
    defaults = {
        "devices": 20 if args.quick else 100,
        "bundle_mb": 2 if args.quick else 20,
        "target_mb": 20 if args.quick else 100,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    phases = set(args.only.split(","))
    started = time.monotonic()
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="fieldlink-update-bench-") as tmp:
        directory = Path(tmp)
        os.environ.setdefault("FIELDLINK_TEST_LOG_DIR", tmp)
        if "rollout" in phases:
            with fieldlink_server(directory / "cloud", None) as server:
                print(f"cloud: {server.base_url} (pid {server.process.pid}), SQLite")
                bench_rollout(server, directory, args)
        if "verify" in phases:
            bench_verify(directory, args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
