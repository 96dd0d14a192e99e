"""REST endpoints of the updates context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["updates"])
