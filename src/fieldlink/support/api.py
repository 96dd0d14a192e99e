"""REST endpoints of the support context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["support"])
