"""REST endpoints of the devices context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["devices"])
