"""REST endpoints of the audit context (thin: parse, call one service, render)."""

from ninja import Router

router = Router(tags=["audit"])
