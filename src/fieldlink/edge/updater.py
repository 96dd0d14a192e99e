"""Signed software and configuration for the agent: python-tuf's ngclient over the agent's TLS.

Nothing is trusted because of where it came from. ``tuf.ngclient`` walks the root chain from
the root pinned at enrollment (``<home>/tuf/metadata/root.json``), then checks timestamp,
snapshot, targets and the one delegated role a path needs: signatures and thresholds, versions
that never go back, expiry, and the length and hash of every file. Only then is a file handed
to the agent. What that refuses, and why it is refused here:

- software only from the ``release`` role (offline keys): the cloud's online keys sign
  ``config/*`` and the client consults them for nothing else;
- a target whose signed ``custom.version`` is not the version asked for (a valid older bundle
  renamed), and a version lower than the running one unless the *signed* target says
  ``allow_downgrade``;
- anything longer than its signed length, and metadata longer than the limits below;
- a download that stalls or drips (an overall rate floor on top of the read timeout).

Every refusal becomes ``UpdateCheckError`` with one of the protocol's ``CHECK_ERRORS`` codes,
which the agent reports to the cloud.

Transport: our own ``FetcherInterface`` over a synchronous httpx client that trusts exactly the
configured CA bundle, takes nothing from the environment, follows no redirect, asks for no
content encoding (a compressed body could inflate past every limit) and sends the device
credential, read from its file for every request so a rotation applies at once.

Everything here blocks: the agent runs it with ``asyncio.to_thread``, one call at a time (a
lock: ngclient's metadata directory is single-writer). ``tuf`` is imported only when a call
runs: it loads ``cryptography``, which the agent does not need to start or to send values.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import httpx

from fieldlink.edge.enroll import EnrollmentError, read_credential, tls_context
from fieldlink.kit.errors import FieldlinkError
from fieldlink.protocol.updates import (
    CHECK_ERRORS,
    TUF_METADATA_PATH,
    TUF_TARGETS_PATH,
    compare_versions,
    release_version_key,
)

if TYPE_CHECKING:
    from tuf.ngclient import FetcherInterface, Updater

__all__ = [
    "EdgeUpdater",
    "Limits",
    "SoftwareDownload",
    "UpdateCheckError",
    "compare_versions",
    "translate",
]

_T = TypeVar("_T")

MiB: Final = 1024 * 1024


class UpdateCheckError(FieldlinkError):
    """An update check or download was refused; ``check_code`` is one of ``CHECK_ERRORS``."""

    code = "update_check_failed"
    kind = "unavailable"

    def __init__(self, check_code: str, message: str) -> None:
        if check_code not in CHECK_ERRORS or not check_code:
            check_code = "repository_error"
        super().__init__(message[:300], details={"check_code": check_code})
        self.check_code = check_code


@dataclass(frozen=True)
class Limits:
    """Upper bounds for what one check may download, and how slowly."""

    root: int = 1 * MiB
    timestamp: int = 64 * 1024
    snapshot: int = 2 * MiB
    targets: int = 4 * MiB  # targets, release, config and a config bin
    software: int = 200 * MiB
    config: int = 1 * MiB
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    # A download may take grace_s plus one second per min_rate bytes received, no longer:
    # a read timeout alone lets a server drip one byte every 29 s forever.
    grace_s: float = 30.0
    min_rate: float = 1024.0


@dataclass(frozen=True)
class SoftwareDownload:
    """A verified release bundle on disk, with what its signed target says."""

    path: Path
    version: str
    allow_downgrade: bool
    length: int
    sha256: str


def software_target(version: str) -> str:
    if release_version_key(version) is None:
        raise UpdateCheckError("bad_target", f"{version[:40]!r} is not a release version")
    return f"software/fieldlink-agent-{version}.tar"


def config_target(device_id: str) -> str:
    try:
        return f"config/{uuid.UUID(device_id)}.json"
    except ValueError:
        raise UpdateCheckError("repository_error", "this device's id is unknown") from None


class EdgeUpdater:
    """The agent's view of the TUF repository: refresh, fetch software, fetch configuration.

    One ngclient ``Updater`` per call (ngclient refreshes once per instance, and every call
    must see the newest signed state); the metadata it trusts persists in ``metadata_dir``.
    """

    def __init__(
        self,
        url: str,
        *,
        home: Path,
        ca_file: Path,
        credential_file: Path,
        software_version: str,
        limits: Limits | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.metadata_url = base + TUF_METADATA_PATH
        self.targets_url = base + TUF_TARGETS_PATH
        self.metadata_dir = home / "tuf" / "metadata"
        self.target_dir = home / "tuf" / "targets"
        self.ca_file = ca_file
        self.credential_file = credential_file
        self.software_version = software_version
        self.limits = limits or Limits()
        self._transport = transport
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    @property
    def trust_anchor(self) -> Path:
        return self.metadata_dir / "root.json"

    def has_trust_anchor(self) -> bool:
        return self.trust_anchor.exists()

    # -- the three calls ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Load and verify root, timestamp, snapshot and targets: surfaces expiry and rollback."""
        self._run(lambda _: None)

    def fetch_software(self, version: str) -> SoftwareDownload:
        """The bundle of ``version``, downloaded and verified, or UpdateCheckError."""
        path = software_target(version)

        def work(updater: Updater) -> SoftwareDownload:
            info = updater.get_targetinfo(path)
            if info is None:
                raise UpdateCheckError(
                    "bad_target", f"{path} is not in the signed release metadata"
                )
            custom = info.custom if isinstance(info.custom, dict) else {}
            if custom.get("version") != version:
                raise UpdateCheckError(
                    "bad_target", f"{path} is signed as version {custom.get('version')!r}"
                )
            allow_downgrade = custom.get("allow_downgrade") is True
            if compare_versions(version, self.software_version) == -1 and not allow_downgrade:
                raise UpdateCheckError(
                    "downgrade_refused",
                    f"{version} is older than the running {self.software_version} and its "
                    "signed target does not allow a downgrade",
                )
            if info.length > self.limits.software:
                raise UpdateCheckError(
                    "too_large", f"{path} is {info.length} bytes, over {self.limits.software}"
                )
            local = updater.find_cached_target(info) or updater.download_target(info)
            return SoftwareDownload(
                Path(local), version, allow_downgrade, info.length, info.hashes.get("sha256", "")
            )

        return self._run(work)

    def fetch_config(self, device_id: str) -> bytes:
        """This device's configuration target, verified (its content is checked by the caller)."""
        path = config_target(device_id)

        def work(updater: Updater) -> bytes:
            info = updater.get_targetinfo(path)
            if info is None:
                raise UpdateCheckError("bad_target", "no configuration is signed for this device")
            if info.length > self.limits.config:
                raise UpdateCheckError(
                    "too_large", f"the configuration is {info.length} bytes, over the limit"
                )
            local = Path(updater.download_target(info))
            try:
                return local.read_bytes()
            finally:
                local.unlink(missing_ok=True)

        return self._run(work)

    def discard(self, download: SoftwareDownload) -> None:
        """Delete a downloaded bundle (installed, or refused by the installer)."""
        download.path.unlink(missing_ok=True)

    def cancel(self) -> None:
        """End a running download at its next chunk, and refuse new calls (the agent stops)."""
        self._cancelled.set()

    # -- machinery -----------------------------------------------------------------------------

    def _run(self, work: Callable[[Updater], _T]) -> _T:
        with self._lock:
            if self._cancelled.is_set():
                raise UpdateCheckError("unreachable", "the agent is stopping")
            if not self.has_trust_anchor():
                raise UpdateCheckError(
                    "repository_error",
                    f"no trusted root at {self.trust_anchor}: enroll again, or give one with "
                    "fieldlink edge enroll --root",
                )
            # One client per call: a check is hourly, and nothing stays open in between.
            with self._client() as client:
                fetcher, close_all = _make_fetcher(
                    client, self._token, self.limits, self.software_version, self._cancelled
                )
                try:
                    updater = self._ngclient(fetcher)
                    updater.refresh()
                    return work(updater)
                except UpdateCheckError:
                    raise
                except Exception as exc:  # every failure becomes a reported code, never a crash
                    raise translate(exc) from exc
                finally:
                    close_all()

    def _ngclient(self, fetcher: FetcherInterface) -> Updater:
        from tuf.ngclient import Updater, UpdaterConfig  # noqa: PLC0415 - loads cryptography

        self.metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.target_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        config = UpdaterConfig(
            max_root_rotations=32,
            root_max_length=self.limits.root,
            timestamp_max_length=self.limits.timestamp,
            snapshot_max_length=self.limits.snapshot,
            targets_max_length=self.limits.targets,
            prefix_targets_with_hash=True,
        )
        # bootstrap=None: the trust anchor is the root.json enrollment pinned (or the newest
        # root ngclient verified from it since), not bytes shipped with this program.
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=self.metadata_url,
            target_dir=str(self.target_dir),
            target_base_url=self.targets_url,
            fetcher=fetcher,
            config=config,
            bootstrap=None,
        )

    def _client(self) -> httpx.Client:
        try:
            context = tls_context(self.ca_file)
        except EnrollmentError as exc:
            raise UpdateCheckError("unreachable", str(exc)) from exc
        return httpx.Client(
            verify=context,
            timeout=httpx.Timeout(
                self.limits.read_timeout_s, connect=self.limits.connect_timeout_s
            ),
            follow_redirects=False,
            trust_env=False,
            transport=self._transport,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def _token(self) -> str:
        return read_credential(self.credential_file)


def _make_fetcher(
    client: httpx.Client,
    token: Callable[[], str],
    limits: Limits,
    version: str,
    cancelled: threading.Event,
) -> tuple[FetcherInterface, Callable[[], None]]:
    """A fetcher and the function that closes what it left open (built here: needs tuf)."""
    from tuf.api import exceptions  # noqa: PLC0415 - loads cryptography
    from tuf.ngclient import FetcherInterface  # noqa: PLC0415

    class HttpxFetcher(FetcherInterface):
        def __init__(self) -> None:
            self._open: set[httpx.Response] = set()

        def _fetch(self, url: str) -> Iterator[bytes]:
            # Eager on purpose: ngclient wraps what _fetch raises, not what its iterator does.
            try:
                credential = token()
            except EnrollmentError as exc:
                raise exceptions.DownloadError(str(exc)) from None
            request = client.build_request(
                "GET",
                url,
                headers={
                    "authorization": f"Bearer {credential}",
                    "accept-encoding": "identity",
                    "user-agent": f"fieldlink-edge/{version or 'dev'}",
                },
            )
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise exceptions.SlowRetrievalError(f"{_name(url)}: {exc!r}") from None
            except httpx.HTTPError as exc:
                raise exceptions.DownloadError(f"{_name(url)}: {_describe(exc)}") from None
            self._open.add(response)
            if response.status_code != 200:
                self._close(response)
                raise exceptions.DownloadHTTPError(
                    f"{_name(url)}: HTTP {response.status_code}", response.status_code
                )
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding != "identity":
                self._close(response)
                raise exceptions.DownloadError(f"{_name(url)} is {encoding}-encoded")
            return self._chunks(response, url)

        def _chunks(self, response: httpx.Response, url: str) -> Iterator[bytes]:
            started = time.monotonic()
            received = 0
            try:
                for chunk in response.iter_raw():
                    if cancelled.is_set():
                        raise exceptions.DownloadError(f"{_name(url)}: the agent is stopping")
                    received += len(chunk)
                    if time.monotonic() - started > limits.grace_s + received / limits.min_rate:
                        raise exceptions.SlowRetrievalError(
                            f"{_name(url)}: {received} bytes in "
                            f"{time.monotonic() - started:.0f} s is too slow"
                        )
                    yield chunk
            except httpx.TimeoutException as exc:
                raise exceptions.SlowRetrievalError(f"{_name(url)}: {exc!r}") from None
            except httpx.HTTPError as exc:
                raise exceptions.DownloadError(f"{_name(url)}: {_describe(exc)}") from None
            finally:
                self._close(response)

        def _close(self, response: httpx.Response) -> None:
            self._open.discard(response)
            response.close()

        def close_all(self) -> None:
            # A download cut short (over its length) leaves its response open until here.
            for response in list(self._open):
                self._close(response)

    fetcher = HttpxFetcher()
    return fetcher, fetcher.close_all


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1][:120]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate(exc: BaseException) -> UpdateCheckError:
    """What python-tuf (or the disk) raised, as the code the agent reports."""
    from tuf.api import exceptions  # noqa: PLC0415

    code = "repository_error"
    if isinstance(exc, exceptions.ExpiredMetadataError):
        code = "expired_metadata"
    elif isinstance(exc, exceptions.BadVersionNumberError):
        code = "rollback"
    elif isinstance(exc, exceptions.UnsignedMetadataError):
        code = "bad_signature"
    elif isinstance(exc, exceptions.LengthOrHashMismatchError):
        code = "bad_target"
    elif isinstance(exc, exceptions.DownloadLengthMismatchError):
        code = "too_large"
    elif isinstance(exc, exceptions.DownloadError):
        code = "unreachable"
    elif isinstance(exc, OSError):
        return UpdateCheckError(code, f"local store: {_describe(exc)}")
    return UpdateCheckError(code, _describe(exc))
