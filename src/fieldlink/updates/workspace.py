"""The release engineer's signing workspace: offline keys, signed metadata, bundles, staging.

A plain directory, meant for an offline machine (or a removable disk passed between engineers)::

    keys/<role>-<n>.pem      private keys of root, targets and release; PKCS#8 encrypted with a
                             passphrase, mode 0600 in a 0700 directory; never printed or logged
    online-keys.json         the cloud's public snapshot/timestamp/config keys
                             (``fieldlink updates keys`` on the cloud)
    metadata/<N>.<role>.json signed root, targets and release versions, as served
    bundles/fieldlink-agent-<v>.tar   the agent bundles the release role lists
    staged.json              new role versions not yet signed to their threshold

All TUF logic is ``tuf_repo``'s (the same code the cloud runs to verify what is published);
this module keeps files. A role version moves from ``staged.json`` to ``metadata/`` only once
its signatures meet the threshold its delegator sets, checked with python-tuf's own
verification, so ``metadata/`` never holds a version the cloud would refuse for its signatures.
Several engineers sign one staged version in turn: the first signature fixes the content and
the expiry, later ones are appended over the very same bytes.

Only ``metadata/`` and ``bundles/`` go to the cloud (``fieldlink release publish``); ``keys/``
never leaves the signing machine.

No Django here: the signing machine has no cloud settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization.json import JSONSerializer

from fieldlink.kit.errors import FieldlinkError
from fieldlink.kit.files import write_atomically
from fieldlink.protocol.updates import compare_versions
from fieldlink.updates import tuf_repo
from fieldlink.updates.bundle import BundleError, build_bundle, bundle_name, read_bundle

__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "OFFLINE_ROLES",
    "ONLINE_ROLES",
    "PASSPHRASE_ENV",
    "PassphraseError",
    "Publication",
    "SignatureStatus",
    "Workspace",
    "WorkspaceError",
    "parse_online_keys",
    "passphrase_from_env",
]

PASSPHRASE_ENV: Final = "FIELDLINK_RELEASE_PASSPHRASE"  # noqa: S105 - a variable name
# The platform's rule for secrets people type (NIST 800-63B length, ARCHITECTURE.md).
MIN_PASSPHRASE_LENGTH: Final = 15
OFFLINE_ROLES: Final = (Root.type, Targets.type, tuf_repo.ROLE_RELEASE)
ONLINE_ROLES: Final = ("snapshot", "timestamp", "config")
KEYS: Final = "keys"
METADATA: Final = "metadata"
BUNDLES: Final = "bundles"
ONLINE_KEYS_FILE: Final = "online-keys.json"
STAGED_FILE: Final = "staged.json"
_SERIALIZER: Final = JSONSerializer(compact=True)


class WorkspaceError(FieldlinkError):
    """The workspace refuses the operation; the message says why and what to do."""

    code = "release_workspace_invalid"
    kind = "invalid"


class PassphraseError(WorkspaceError):
    """A key file did not decrypt with the passphrase given (or the passphrase is too short)."""

    code = "release_passphrase_wrong"


@dataclass(frozen=True)
class SignatureStatus:
    """How far a role version is from its threshold (root: the old and the new root's)."""

    role: str
    version: int
    signed: int
    threshold: int
    previous_signed: int | None = None
    previous_threshold: int | None = None

    @property
    def ready(self) -> bool:
        previous_ok = self.previous_threshold is None or (
            self.previous_signed is not None and self.previous_signed >= self.previous_threshold
        )
        return self.signed >= self.threshold and previous_ok

    def describe(self) -> str:
        text = f"{self.role} v{self.version}: {self.signed} of {self.threshold} signatures"
        if self.previous_threshold is not None:
            text += (
                f" (new keys); {self.previous_signed} of {self.previous_threshold} "
                f"signatures of root v{self.version - 1}'s keys"
            )
        return text + (" — ready to publish" if self.ready else " — needs more signatures")


@dataclass(frozen=True)
class Publication:
    """What ``fieldlink release publish`` sends: metadata files by name, bundles by target path."""

    files: dict[str, bytes]
    bundles: dict[str, Path]


def parse_online_keys(document: Any) -> dict[str, Key]:
    """The cloud's public online keys from ``fieldlink updates keys`` output (no private part)."""
    if not isinstance(document, dict) or set(document) != set(ONLINE_ROLES):
        raise WorkspaceError(
            f"the online keys file must have exactly the entries {list(ONLINE_ROLES)} "
            "(the output of `fieldlink updates keys` on the cloud)"
        )
    keys: dict[str, Key] = {}
    for role in ONLINE_ROLES:
        entry = document[role]
        if not isinstance(entry, dict) or "keyid" not in entry:
            raise WorkspaceError(f"online key {role!r} has no keyid")
        fields = {k: v for k, v in entry.items() if k != "keyid"}
        if "private" in json.dumps(fields).lower():
            raise WorkspaceError("the online keys file holds private material: refused")
        try:
            key = SSlibKey.from_dict(str(entry["keyid"]), fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkspaceError(f"online key {role!r} is not a public key: {exc}") from exc
        # A keyid that is not the key's own would make the root name a key nobody holds.
        if _own_keyid(key) != key.keyid:
            raise WorkspaceError(f"online key {role!r}: its keyid does not match the key")
        keys[role] = key
    if len({key.keyid for key in keys.values()}) != len(keys):
        raise WorkspaceError("the online roles must have three different keys")
    return keys


def _own_keyid(key: SSlibKey) -> str:
    """The keyid the key really has: securesystemslib's hash of its public half."""
    if key.keytype != "ed25519" or key.scheme != "ed25519":
        raise WorkspaceError(f"online key type {key.keytype!r} is not supported (ed25519)")
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkspaceError("an online key is not an ed25519 public key") from exc
    return str(SSlibKey.from_crypto(public).keyid)


def _check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise PassphraseError(
            f"the key passphrase must be at least {MIN_PASSPHRASE_LENGTH} characters long"
        )


class Workspace:
    """One release workspace directory (see the module docstring for its layout)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- layout --------------------------------------------------------------------------------

    @property
    def keys_dir(self) -> Path:
        return self.path / KEYS

    @property
    def metadata_dir(self) -> Path:
        return self.path / METADATA

    @property
    def bundles_dir(self) -> Path:
        return self.path / BUNDLES

    def bundle_path(self, version: str) -> Path:
        return self.bundles_dir / bundle_name(version)

    def _require(self) -> None:
        if not (self.metadata_dir / "1.root.json").exists():
            raise WorkspaceError(
                f"{self.path} is not a release workspace (run `fieldlink release init`)"
            )

    # -- creating ------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        *,
        online_keys: Mapping[str, Any],
        passphrase: bytes,
        root_keys: int = 1,
        root_threshold: int = 1,
        targets_keys: int = 1,
        targets_threshold: int = 1,
        release_keys: int = 1,
        release_threshold: int = 1,
        now: datetime | None = None,
    ) -> Workspace:
        """New keys and the first signed root, targets and (empty) release versions."""
        _check_passphrase(passphrase)
        online = parse_online_keys(online_keys)
        workspace = cls(path)
        if workspace.metadata_dir.exists() and any(workspace.metadata_dir.iterdir()):
            raise WorkspaceError(f"{path} already holds signed metadata: refusing to overwrite")
        counts = {Root.type: root_keys, Targets.type: targets_keys, "release": release_keys}
        if any(not 1 <= count <= 20 for count in counts.values()):
            raise WorkspaceError("each role has 1 to 20 keys")
        signers = {role: [tuf_repo.new_signer() for _ in range(n)] for role, n in counts.items()}
        try:
            root: list[Signer] = list(signers[Root.type])
            targets: list[Signer] = list(signers[Targets.type])
            repo = tuf_repo.Repository.offline(
                root=root,
                targets=targets,
                release=[s.public_key for s in signers["release"]],
                online=online,
                root_threshold=root_threshold,
                targets_threshold=targets_threshold,
                release_threshold=release_threshold,
                now=now,
            )
            repo.sign_role(tuf_repo.ROLE_RELEASE, signers=list(signers["release"]), bump=False)
        except tuf_repo.PublicationError as exc:
            raise WorkspaceError(str(exc)) from exc
        for directory in (path, workspace.metadata_dir, workspace.bundles_dir):
            directory.mkdir(parents=True, exist_ok=True)
        workspace.keys_dir.mkdir(mode=0o700, exist_ok=True)
        workspace.keys_dir.chmod(0o700)
        for role, role_signers in signers.items():
            for signer in role_signers:
                workspace._write_key(role, signer, passphrase)
        write_atomically(
            path / ONLINE_KEYS_FILE,
            (json.dumps(dict(online_keys), indent=2, sort_keys=True) + "\n").encode(),
            0o644,
        )
        for name, data in repo.files.items():
            write_atomically(workspace.metadata_dir / name, data, 0o644)
        return workspace

    # -- keys ----------------------------------------------------------------------------------

    def _write_key(self, role: str, signer: CryptoSigner, passphrase: bytes) -> str:
        taken = {p.stem for p in self.keys_dir.glob(f"{role}-*.pem")}
        number = 1
        while f"{role}-{number}" in taken:
            number += 1
        name = f"{role}-{number}"
        write_atomically(
            self.keys_dir / f"{name}.pem", tuf_repo.private_pem(signer, passphrase), 0o600
        )
        return name

    def key_names(self, role: str) -> list[str]:
        numbers = sorted(
            int(suffix)
            for path in self.keys_dir.glob(f"{role}-*.pem")
            if (suffix := path.stem.removeprefix(f"{role}-")).isdigit()
        )
        return [f"{role}-{number}" for number in numbers]

    def load_signer(self, name: str, passphrase: bytes) -> CryptoSigner:
        role, _, number = name.rpartition("-")
        if role not in OFFLINE_ROLES or not number.isdigit():
            raise WorkspaceError(f"{name!r} is not a key name (<role>-<n>, e.g. release-2)")
        path = self.keys_dir / f"{name}.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError as exc:
            raise WorkspaceError(f"there is no key {name} in {self.keys_dir}") from exc
        if path.stat().st_mode & 0o077:
            raise WorkspaceError(f"{path} is readable by others: chmod 600 it first")
        try:
            return tuf_repo.signer_from_pem(pem, passphrase)
        except (ValueError, TypeError):
            # The cause may quote key material in some backends; say only what failed.
            raise PassphraseError(f"key {name}: wrong passphrase or not a key file") from None

    def signers_for(
        self,
        role: str,
        passphrase: bytes,
        names: Iterable[str] | None = None,
        *,
        required: bool = True,
    ) -> list[CryptoSigner]:
        """The keys named (default: every key of ``role`` here) that ``role`` now trusts."""
        # Nothing staged: the keys that would sign the next version (after a root rotation the
        # old root keys no longer sign anything but the rotation itself).
        pending = self.staged().get(role) or self._next_version(role)
        allowed = self._allowed_keyids(role, pending)
        explicit = names is not None
        chosen = list(names) if names is not None else self.key_names(role)
        out = []
        for name in chosen:
            signer = self.load_signer(name, passphrase)
            if signer.public_key.keyid in allowed:
                out.append(signer)
            elif explicit:
                raise WorkspaceError(f"key {name} is not a key of the {role} role")
        if not out and required:
            raise WorkspaceError(f"no key of the {role} role in {self.keys_dir}")
        return out

    # -- metadata ------------------------------------------------------------------------------

    def metadata_files(self) -> dict[str, bytes]:
        self._require()
        return {p.name: p.read_bytes() for p in sorted(self.metadata_dir.glob("*.json"))}

    def repository(self, now: datetime | None = None) -> tuf_repo.Repository:
        try:
            return tuf_repo.Repository.load(self.metadata_files(), now=now)
        except tuf_repo.PublicationError as exc:
            raise WorkspaceError(str(exc)) from exc

    def _newest(self, role: str) -> Metadata[Any]:
        repo = self.repository()
        if role not in repo.md:
            raise WorkspaceError(f"no signed {role} metadata in {self.metadata_dir}")
        return repo.md[role]

    def _signed(self, role: str, version: int) -> Metadata[Any] | None:
        path = self.metadata_dir / tuf_repo.metadata_name(role, version)
        return Metadata.from_bytes(path.read_bytes()) if path.exists() else None

    def online_keys(self) -> dict[str, Key]:
        return parse_online_keys(json.loads((self.path / ONLINE_KEYS_FILE).read_bytes()))

    # -- staging -------------------------------------------------------------------------------

    def staged(self) -> dict[str, Metadata[Any]]:
        path = self.path / STAGED_FILE
        if not path.exists():
            return {}
        document = json.loads(path.read_bytes())
        return {
            role: Metadata.from_bytes(json.dumps(md).encode())
            for role, md in document.get("roles", {}).items()
        }

    def _save_staged(self, staged: Mapping[str, Metadata[Any]]) -> None:
        path = self.path / STAGED_FILE
        if not staged:
            path.unlink(missing_ok=True)
            return
        document = {
            "format": 1,
            "roles": {role: json.loads(md.to_bytes(_SERIALIZER)) for role, md in staged.items()},
        }
        write_atomically(path, (json.dumps(document, indent=2) + "\n").encode(), 0o644)

    def discard(self, role: str) -> bool:
        staged = self.staged()
        found = staged.pop(role, None) is not None
        self._save_staged(staged)
        return found

    def _next_version(self, role: str) -> Metadata[Any]:
        """A copy of the newest signed version of ``role``, one higher and unsigned."""
        md = Metadata.from_bytes(self._newest(role).to_bytes(_SERIALIZER))
        md.signed.version += 1
        md.signatures.clear()
        return md

    def add_release(
        self,
        version: str,
        *,
        bundle: Path | None = None,
        wheels: Path | None = None,
        allow_downgrade: bool = False,
    ) -> SignatureStatus:
        """Put a bundle into ``bundles/`` and stage it in a new, unsigned release version."""
        self._require()
        if (bundle is None) == (wheels is None):
            raise WorkspaceError("give a bundle file or a directory of wheels, not both")
        try:
            tuf_repo.software_path(version)
        except ValueError as exc:
            raise WorkspaceError(str(exc)) from exc
        staged = self.staged()
        release = staged.get(tuf_repo.ROLE_RELEASE) or self._next_version(tuf_repo.ROLE_RELEASE)
        self._check_new_version(release, version, allow_downgrade=allow_downgrade)
        destination = self.bundle_path(version)
        try:
            if wheels is not None:
                build_bundle(version, sorted(wheels.glob("*.whl")), destination)
            else:
                assert bundle is not None  # noqa: S101 - exactly one of the two, checked above
                write_atomically(destination, bundle.read_bytes(), 0o644)
                # Checked where it now lies: the copy is what gets hashed and signed.
                read_bundle(destination, version=version)
        except BundleError as exc:
            if bundle is not None:
                destination.unlink(missing_ok=True)
            raise WorkspaceError(f"bundle refused: {exc.message}") from exc
        # The bundle on disk is what gets hashed and signed, so what is published is what was read.
        data = destination.read_bytes()
        repo = self.repository()
        repo.md[tuf_repo.ROLE_RELEASE] = release
        repo.stage_software(version, data, allow_downgrade=allow_downgrade)
        # New content: any signature over the previous staged content no longer applies.
        release.signatures.clear()
        staged[tuf_repo.ROLE_RELEASE] = release
        self._save_staged(staged)
        return self.status(tuf_repo.ROLE_RELEASE)

    def _check_new_version(
        self, release: Metadata[Any], version: str, *, allow_downgrade: bool
    ) -> None:
        existing = {
            str(t.custom.get("version", "")) if isinstance(t.custom, dict) else ""
            for t in release.signed.targets.values()
        }
        if version in existing:
            raise WorkspaceError(
                f"{version} is already in the release role: a version names one bundle, forever"
            )
        newer = sorted(v for v in existing if (compare_versions(v, version) or 0) > 0)
        if newer and not allow_downgrade:
            raise WorkspaceError(
                f"{version} is older than {', '.join(newer)}: agents refuse it unless it is "
                "signed for a deliberate rollback (--allow-downgrade)"
            )

    # -- signing -------------------------------------------------------------------------------

    def sign(self, role: str, signers: list[Signer], *, renew: bool = False) -> SignatureStatus:
        """Add signatures to the staged version of ``role``; move it to metadata/ when ready.

        ``renew`` stages a new version of an unchanged role first (to push its expiry out).
        """
        self._require()
        if role not in OFFLINE_ROLES:
            raise WorkspaceError(f"only {', '.join(OFFLINE_ROLES)} are signed offline")
        staged = self.staged()
        md = staged.get(role)
        if md is None:
            if not renew:
                raise WorkspaceError(
                    f"nothing is staged for {role}: `release add` stages a release; "
                    f"pass --renew to sign a new {role} version with a fresh expiry"
                )
            md = self._next_version(role)
        allowed = self._allowed_keyids(role, md)
        for signer in signers:
            if signer.public_key.keyid not in allowed:
                raise WorkspaceError(f"a key given is not a key of the {role} role")
        if not md.signatures:
            # The first signature fixes the content and the expiry every later one signs.
            repo = self.repository()
            repo.md[role] = md
            try:
                repo.sign_role(role, signers=list(signers), bump=False)
            except tuf_repo.PublicationError as exc:
                raise WorkspaceError(str(exc)) from exc
        else:
            for signer in signers:
                md.sign(signer, append=True)
        status = self._status_of(role, md)
        if status.ready:
            write_atomically(
                self.metadata_dir / tuf_repo.metadata_name(role, md.signed.version),
                md.to_bytes(_SERIALIZER),
                0o644,
            )
            staged.pop(role, None)
        else:
            staged[role] = md
        self._save_staged(staged)
        return status

    def status(self, role: str) -> SignatureStatus:
        md = self.staged().get(role) or self._newest(role)
        return self._status_of(role, md)

    def _delegator(self, role: str) -> Metadata[Any]:
        return self._newest(Targets.type if role == tuf_repo.ROLE_RELEASE else Root.type)

    def _previous_root(self, md: Metadata[Any]) -> Root | None:
        if md.signed.version == 1:
            return None
        previous = self._signed(Root.type, md.signed.version - 1)
        if previous is None:
            raise WorkspaceError(f"root v{md.signed.version - 1} is missing from metadata/")
        signed: Root = previous.signed
        return signed

    def _allowed_keyids(self, role: str, md: Metadata[Any]) -> set[str]:
        if role == Root.type:
            previous = self._previous_root(md)
            keyids = set(md.signed.roles[Root.type].keyids)
            return keyids | (set(previous.roles[Root.type].keyids) if previous else set())
        delegator = self._delegator(role)
        return set(delegator.signed.get_delegated_role(role).keyids)

    def _status_of(self, role: str, md: Metadata[Any]) -> SignatureStatus:
        payload = md.signed_bytes
        if role == Root.type:
            previous = self._previous_root(md)
            result = md.signed.get_root_verification_result(previous, payload, md.signatures)
            new = result.second
            old = result.first if previous is not None else None
            return SignatureStatus(
                role=role,
                version=md.signed.version,
                signed=len(new.signed),
                threshold=new.threshold,
                previous_signed=len(old.signed) if old is not None else None,
                previous_threshold=old.threshold if old is not None else None,
            )
        verification = self._delegator(role).signed.get_verification_result(
            role, payload, md.signatures
        )
        return SignatureStatus(
            role=role,
            version=md.signed.version,
            signed=len(verification.signed),
            threshold=verification.threshold,
        )

    # -- root rotation -------------------------------------------------------------------------

    def rotate_root(
        self, *, new_keys: int, threshold: int, old_signers: list[Signer], passphrase: bytes
    ) -> SignatureStatus:
        """Stage root N+1 with ``new_keys`` fresh keys, signed by the new keys and the old ones
        given; it is ready once both the old and the new threshold are met."""
        self._require()
        _check_passphrase(passphrase)
        if Root.type in self.staged():
            raise WorkspaceError(
                "a root version is already staged: sign it (`release sign --role root`) or "
                "discard it (`release discard --role root`)"
            )
        if not 1 <= new_keys <= 20:
            raise WorkspaceError("the new root has 1 to 20 keys")
        repo = self.repository()
        current = repo.md[Root.type]
        trusted = set(current.signed.roles[Root.type].keyids)
        if any(signer.public_key.keyid not in trusted for signer in old_signers):
            raise WorkspaceError("a key given is not a key of the current root")
        new_signers = [tuf_repo.new_signer() for _ in range(new_keys)]
        new_root: list[Signer] = list(new_signers)
        try:
            repo.rotate_root(new_root, threshold, old_root=list(old_signers))
        except tuf_repo.PublicationError as exc:
            raise WorkspaceError(str(exc)) from exc
        for signer in new_signers:
            self._write_key(Root.type, signer, passphrase)
        md = repo.md[Root.type]
        status = self._status_of(Root.type, md)
        staged = self.staged()
        if status.ready:
            write_atomically(
                self.metadata_dir / tuf_repo.metadata_name(Root.type, md.signed.version),
                md.to_bytes(_SERIALIZER),
                0o644,
            )
        else:
            staged[Root.type] = md
        self._save_staged(staged)
        return status

    # -- publishing ----------------------------------------------------------------------------

    def publication(self, published: Mapping[str, int]) -> Publication:
        """The signed files newer than ``published`` (role → version the cloud serves).

        Every root version after the published one (a device walks the chain one by one), the
        newest targets and release if newer, and the bundles that release lists.
        """
        files = self.metadata_files()
        out: dict[str, bytes] = {}
        newest: dict[str, tuple[int, str]] = {}
        for name in files:
            number, _, rest = name.partition(".")
            role = rest.removesuffix(".json")
            if role not in OFFLINE_ROLES or not number.isdigit():
                continue
            version = int(number)
            if role == Root.type:
                if version > published.get(role, 0):
                    out[name] = files[name]
            elif version > max(published.get(role, 0), newest.get(role, (0, ""))[0]):
                newest[role] = (version, name)
        for _, name in newest.values():
            out[name] = files[name]
        bundles: dict[str, Path] = {}
        release_name = newest.get(tuf_repo.ROLE_RELEASE, (0, ""))[1]
        if release_name:
            release = Metadata[Targets].from_bytes(files[release_name])
            for path in release.signed.targets:
                bundle = self.bundles_dir / path.rpartition("/")[2]
                if bundle.exists():
                    bundles[path] = bundle
        return Publication(files=out, bundles=bundles)

    def holds_private_keys(self) -> bool:
        return self.keys_dir.exists() and any(self.keys_dir.glob("*.pem"))


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None
