"""The ASGI application: Django behind the request guard."""

from __future__ import annotations

import os
from typing import cast

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from fieldlink.cloud.guards import ASGIApp, RequestGuard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fieldlink.cloud.django_settings")


def build_application() -> ASGIApp:
    django.setup(set_prefix=False)
    # Django's stubs type ASGI messages as Mapping, ours as MutableMapping; the protocol is one.
    django_app = cast("ASGIApp", ASGIHandler())
    return RequestGuard(django_app, max_body_bytes=settings.FIELDLINK.max_body_bytes)


application = build_application()
