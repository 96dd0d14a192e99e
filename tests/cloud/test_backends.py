"""The database and cache are the ones configured: the PostgreSQL + Redis pass really uses them."""

from __future__ import annotations

import os
import uuid

import pytest
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.db import connection

pytestmark = pytest.mark.backend


@pytest.mark.django_db
def test_database_is_the_configured_engine() -> None:
    expected = "postgresql" if os.environ.get("FIELDLINK_DATABASE_URL") else "sqlite"
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_cache_is_the_configured_backend_and_round_trips() -> None:
    cache = caches["default"]
    expected = RedisCache if os.environ.get("FIELDLINK_REDIS_URL") else LocMemCache
    assert isinstance(cache, expected)
    key = f"test:{uuid.uuid4()}"
    try:
        assert cache.add(key, 1, timeout=30)
        assert not cache.add(key, 2, timeout=30)  # add is atomic: the rate limits rely on it
        assert cache.incr(key) == 2
        assert cache.get(key) == 2
    finally:
        cache.delete(key)
    assert cache.get(key) is None
