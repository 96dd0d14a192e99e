"""Errors of the updates context, each with a stable code (root: fieldlink.kit.errors)."""

from __future__ import annotations

from fieldlink.kit.errors import FieldlinkError


class PublicationRefusedError(FieldlinkError):
    """Offline-signed metadata or bundles the cloud will not publish; the message says why."""

    code = "publication_refused"
    kind = "invalid"


class RepositoryMissingError(FieldlinkError):
    """The TUF repository has not been initialised (no trusted root published yet)."""

    code = "tuf_repository_missing"
    kind = "conflict"


class ReleaseNotPublishedError(FieldlinkError):
    """The version is not a software target of the current signed ``release`` metadata."""

    code = "release_not_published"
    kind = "invalid"


class DowngradeRefusedError(FieldlinkError):
    """The release is older than what some devices run; ``details.devices`` lists them.

    Pass ``force`` to roll back on purpose; a release not signed with ``allow_downgrade`` is
    refused even then (``details.reason`` = ``not_signed_for_downgrade``), because every agent
    would refuse to install it.
    """

    code = "downgrade_refused"
    kind = "conflict"


class RolloutInvalidError(FieldlinkError):
    """A rollout parameter the service refuses; ``details.field`` names it."""

    code = "rollout_invalid"
    kind = "invalid"


class RolloutDeviceBusyError(FieldlinkError):
    """Some devices are already in an active rollout; ``details.devices`` lists them."""

    code = "rollout_device_busy"
    kind = "conflict"


class RolloutStateError(FieldlinkError):
    """The rollout's state does not allow this (e.g. resuming a completed rollout)."""

    code = "rollout_state"
    kind = "conflict"


class ConfigurationInvalidError(FieldlinkError):
    """A device configuration that does not validate; the message names the culprit."""

    code = "configuration_invalid"
    kind = "invalid"
