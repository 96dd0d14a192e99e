"""REST endpoints of the telemetry context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["telemetry"])
