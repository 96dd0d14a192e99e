"""REST endpoints of the billing context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["billing"])
