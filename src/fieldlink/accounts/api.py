"""REST endpoints of the accounts context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["accounts"])
