"""Errors of the telemetry context, each with a stable code (root: fieldlink.kit.errors)."""

from __future__ import annotations

from fieldlink.kit.errors import FieldlinkError


class PointUnknownError(FieldlinkError):
    """A value for a point this device may not write: unknown, another tenant's, or not served.

    One code for all three, so a device learns nothing about points outside its own assets.
    """

    code = "point_unknown"
    kind = "invalid"


class TelemetryUnavailableError(FieldlinkError):
    code = "rate_limit_unavailable"
    kind = "unavailable"


class ThresholdsInvalidError(FieldlinkError):
    """A limit set that cannot be evaluated unambiguously; ``details.field`` names the culprit."""

    code = "thresholds_invalid"
    kind = "invalid"


class WebhookInvalidError(FieldlinkError):
    """A webhook field the service refuses; ``details.field`` names it."""

    code = "webhook_invalid"
    kind = "invalid"


class WebhookLimitError(FieldlinkError):
    code = "webhook_limit_reached"
    kind = "conflict"


class WebhookStateError(FieldlinkError):
    """The webhook or delivery is not in a state that allows this (disabled, not failed, …)."""

    code = "webhook_state"
    kind = "conflict"
