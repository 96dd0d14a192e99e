"""The telemetry tests use the accounts fixtures (users, HTTPS clients, fresh rate limits)."""

from tests.accounts.conftest import _fresh_cache, make_client, make_user, web

__all__ = ["_fresh_cache", "make_client", "make_user", "web"]
