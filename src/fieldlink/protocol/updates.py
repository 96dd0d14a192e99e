"""Signed updates and configuration in the edge ⇄ cloud contract: the report and the TUF paths.

Software and configuration never travel in these messages: they are TUF targets the agent
downloads and verifies itself (``docs/updates.md``). What travels here is what each side needs
to decide: the cloud tells the device which version it should run and which configuration
version it should apply (in every telemetry ``Ack`` and in ``ReportAck``); the device tells the
cloud what it runs, what it applied and what went wrong (``DeviceReport``).

No I/O and nothing of ours is imported besides the shared refusal type.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from fieldlink.protocol.telemetry import BatchRefused

__all__ = [
    "CHECK_ERRORS",
    "RELEASE_VERSION_RE",
    "REPORT_PATH",
    "TUF_METADATA_PATH",
    "TUF_TARGETS_PATH",
    "UPDATE_STATES",
    "DeviceReport",
    "ReportAck",
    "compare_versions",
    "decode_report",
    "release_version_key",
]

REPORT_PATH: Final = "/edge/v1/report"
TUF_METADATA_PATH: Final = "/edge/v1/tuf/metadata/"
TUF_TARGETS_PATH: Final = "/edge/v1/tuf/targets/"

UPDATE_STATES: Final = frozenset(
    {"", "downloading", "installing", "restarting", "running", "rolled_back", "failed", "refused"}
)
# Why an update check failed, as the agent classifies what python-tuf raised.
CHECK_ERRORS: Final = frozenset(
    {
        "",
        "expired_metadata",
        "bad_signature",
        "rollback",
        "unreachable",
        "too_large",
        "bad_target",
        "downgrade_refused",
        "repository_error",
    }
)
MAX_VERSION: Final = 100

# Release versions as the release tooling writes them and both sides order them: 1.4.0,
# 1.4.0.1, 1.4.0rc1 (a PEP 440 subset: no epochs, post or dev releases, no local part).
RELEASE_VERSION_RE: Final = re.compile(
    r"^(?P<release>[0-9]{1,6}(?:\.[0-9]{1,6}){1,3})(?:(?P<pre>a|b|rc)(?P<n>[0-9]{1,4}))?$"
)
_PRE_RANK: Final = {"a": 0, "b": 1, "rc": 2}
_FINAL_RANK: Final = 3
MAX_ERROR: Final = 300
_SHA256: Final = re.compile(r"^(?:[0-9a-f]{64})?$")


class DeviceReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """POST /edge/v1/report: what the device runs, what it applied, what failed.

    Sent at start and whenever one of these changes (not with every batch), outside the
    telemetry buffer: a report is about now, a buffered batch may be hours old.
    """

    software_version: str
    config_version: int = 0
    config_hash: str = ""  # SHA-256 (hex) of the configuration target bytes being applied
    config_error: str = ""  # why the desired configuration was not applied
    update_version: str = ""
    update_state: str = ""
    update_error: str = ""
    check_ok: bool = True
    check_error_code: str = ""
    check_error: str = ""
    checked_at_ms: int = 0


class ReportAck(msgspec.Struct, frozen=True):
    desired_config_version: int
    update_available: str | None


_report_decoder: Final = msgspec.json.Decoder(DeviceReport)


def decode_report(body: bytes) -> DeviceReport:
    """A report, checked for sizes and known codes; a refusal names the field at fault."""
    try:
        report = _report_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BatchRefused("body_invalid", f"The report is not valid: {exc}") from exc
    for name in ("software_version", "update_version"):
        if len(getattr(report, name)) > MAX_VERSION:
            raise BatchRefused("body_invalid", f"{name} is longer than {MAX_VERSION} characters.")
    for name in ("config_error", "update_error", "check_error"):
        if len(getattr(report, name)) > MAX_ERROR:
            raise BatchRefused("body_invalid", f"{name} is longer than {MAX_ERROR} characters.")
    if not _SHA256.match(report.config_hash):
        raise BatchRefused("body_invalid", "config_hash must be 64 lowercase hex digits.")
    if report.update_state not in UPDATE_STATES:
        raise BatchRefused("body_invalid", "update_state is not a known state.")
    if report.check_error_code not in CHECK_ERRORS:
        raise BatchRefused("body_invalid", "check_error_code is not a known code.")
    if not 0 <= report.config_version <= 2**31 - 1:
        raise BatchRefused("body_invalid", "config_version is out of range.")
    if not 0 <= report.checked_at_ms <= 2**63 - 1:
        raise BatchRefused("body_invalid", "checked_at_ms is out of range.")
    return report


def release_version_key(version: str) -> tuple[tuple[int, ...], int, int] | None:
    """A sort key (1.4.0a1 < 1.4.0rc1 < 1.4.0 == 1.4 < 1.4.0.1), None if not a release version.

    Trailing zeros do not count, as in PEP 440.
    """
    match = RELEASE_VERSION_RE.match(version)
    if match is None:
        return None
    numbers = [int(part) for part in match["release"].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    if match["pre"] is None:
        return tuple(numbers), _FINAL_RANK, 0
    return tuple(numbers), _PRE_RANK[match["pre"]], int(match["n"])


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as ``a`` is older, the same or newer than ``b``; None if either is no release.

    A development build ("0.1.0.dev3", "test") has no place in the order: nothing is a
    downgrade from it.
    """
    key_a, key_b = release_version_key(a), release_version_key(b)
    if key_a is None or key_b is None:
        return None
    return (key_a > key_b) - (key_a < key_b)
