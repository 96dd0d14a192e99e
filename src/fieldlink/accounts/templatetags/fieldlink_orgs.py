"""The organisation switcher of the top navigation and the organisation pages' sub-navigation.

Other contexts' pages under /orgs/<org_id>/ (audit, exports) extend ``orgs/layout.html`` with a
``scope`` in their context and get the same header, deletion banner and sub-navigation.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse

from fieldlink.accounts import access
from fieldlink.accounts.access import Permission, Principal, Scope
from fieldlink.accounts.models import User

register = template.Library()

# The organisation last opened (set by fieldlink.accounts.views): the switcher leads back to it.
ORG_SESSION_KEY = "org"


@register.inclusion_tag("orgs/_switcher.html", takes_context=True)
def org_switcher(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if request is None or not isinstance(user, User) or not user.is_authenticated:
        return {"show": False}
    organisations = access.organisations_of(Principal(user, "session"))
    remembered = request.session.get(ORG_SESSION_KEY)
    current = next((pair for pair in organisations if str(pair[0].pk) == remembered), None)
    return {
        "show": True,
        "current": current,
        "others": [pair for pair in organisations if pair is not current],
    }


def _url(name: str, org_id: str, fallback: str) -> str:
    # Audit and export pages belong to other contexts; their routes may not be mounted yet.
    try:
        return reverse(name, kwargs={"org_id": org_id})
    except NoReverseMatch:
        return fallback


@register.inclusion_tag("orgs/_subnav.html", takes_context=True)
def org_subnav(context: template.Context, scope: Scope) -> dict[str, Any]:
    org_id = str(scope.organisation.pk)
    overview = reverse("orgs:detail", kwargs={"org_id": org_id})
    links = [
        ("Overview", overview),
        ("Members", reverse("orgs:members", kwargs={"org_id": org_id})),
    ]
    if Permission.DATA_VIEW in scope.permissions:
        links.insert(1, ("Assets", _url("assets:list", org_id, overview + "assets/")))
        links.insert(2, ("Alarms", _url("alarms:list", org_id, overview + "alarms/")))
        links.insert(3, ("Updates", _url("updates:overview", org_id, overview + "updates/")))
    links.insert(-1, ("Plant", _url("plant:hierarchy", org_id, overview + "plant/")))
    # Shown by role, not by the deletion state: both stay readable while deletion is pending.
    if Permission.AUDIT_VIEW in scope.permissions:
        links.append(("Audit", _url("audit:list", org_id, overview + "audit/")))
    if Permission.EXPORT_REQUEST in scope.permissions:
        links.append(("Exports", _url("orgs:exports", org_id, overview + "exports/")))
    links.append(("Settings", reverse("orgs:settings", kwargs={"org_id": org_id})))
    request = context.get("request")
    path = request.path if request is not None else ""
    current = max((url for _, url in links if path.startswith(url)), key=len, default="")
    return {"links": [(label, url, url == current) for label, url in links]}
