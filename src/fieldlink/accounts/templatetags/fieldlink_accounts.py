"""Template filters of the accounts pages."""

from __future__ import annotations

from django import template

from fieldlink.accounts.services import describe_device

register = template.Library()


@register.filter(name="device")
def device(user_agent: str | None) -> str:
    """'Firefox on Linux' instead of a raw User-Agent string."""
    return describe_device(user_agent or "")
