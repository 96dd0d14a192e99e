"""REST endpoints of the ops context (thin: parse, call one service, render)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Schema

from fieldlink import __version__

router = Router(tags=["ops"])


class VersionOut(Schema):
    version: str
    api: str
    region: str


@router.get("/version", response=VersionOut, auth=None, summary="Server version and region")
def version(request: HttpRequest) -> VersionOut:
    return VersionOut(version=__version__, api="1", region=settings.FIELDLINK.region)
