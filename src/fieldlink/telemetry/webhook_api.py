"""REST endpoints for alarm notifications: webhooks, their deliveries, e-mail subscriptions."""

from __future__ import annotations

from ninja import Router

router = Router(tags=["alarms"])
