"""The ASGI application: Django behind the request guard."""

from __future__ import annotations

import os
from typing import cast

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from fieldlink.cloud.guards import ASGIApp, Receive, RequestGuard, Scope, Send, baseline_headers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fieldlink.cloud.django_settings")


def build_application() -> ASGIApp:
    django.setup(set_prefix=False)
    # Django's stubs type ASGI messages as Mapping, ours as MutableMapping; the protocol is one.
    django_app = cast("ASGIApp", ASGIHandler())
    from fieldlink.telemetry.edge_app import PREFIX, EdgeApp  # noqa: PLC0415 - after setup()

    # The edge endpoints skip Django's request machinery (measured: docs/benchmarks.md) but
    # stay behind the same guard: body cap, refused methods; HTTPS-only is checked in EdgeApp.
    edge_app = EdgeApp(headers=baseline_headers)

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await edge_app(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    return RequestGuard(route, max_body_bytes=settings.FIELDLINK.max_body_bytes)


application = build_application()
