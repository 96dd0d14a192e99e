"""Sign-in limits live in the shared cache, so two server processes on one Redis count together.

Two real ``fieldlink serve`` processes share one database and one Redis. Failed sign-ins alternate
between them; the sixth failure for the account (counting both) is refused on either server. With
per-process counters each server would allow five of its own, ten in all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer, postgres_database_for_server, run_server

pytestmark = [pytest.mark.backend]

PASSWORD = register_canary("violet-harbor-quantum-lantern-97")
WRONG_PASSWORD = register_canary("wrong-guess-saffron-orbit-1234")
# The SQLite pass has no Redis of its own, but sharing limits is only meaningful with one; Redis
# always runs on this machine and in CI. Database 14 keeps clear of the suite's database 15.
DEFAULT_SHARED_REDIS = "redis://127.0.0.1:6379/14"
ACCOUNT_LIMIT = 5  # "5/5m/key" in ACCOUNT_RATE_LIMITS["login_failed"]

_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def sign_in_over_https(client: httpx.Client, email: str, password: str) -> httpx.Response:
    """allauth's sign-in form, as a browser posts it: CSRF cookie and token, same Origin."""
    page = client.get("/accounts/login/")
    assert page.status_code == 200, page.status_code
    match = _CSRF_INPUT.search(page.text)
    assert match, "the sign-in form has no CSRF token"
    return client.post(
        "/accounts/login/",
        data={"csrfmiddlewaretoken": match.group(1), "login": email, "password": password},
        headers={"Origin": str(client.base_url).rstrip("/"), "Referer": f"{client.base_url}"},
    )


def create_verified_user(server: RunningServer, email: str, password: str) -> None:
    """Writes the user straight into the server's database, in a process with the server's env."""
    script = textwrap.dedent(
        """
        import sys
        import django
        django.setup()
        from allauth.account.models import EmailAddress
        from fieldlink.accounts.models import User
        email, password = sys.argv[1], sys.stdin.read()
        user = User.objects.create_user(email=email, password=password)
        EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
        """
    )
    env = {**server.env, "DJANGO_SETTINGS_MODULE": "fieldlink.cloud.django_settings"}
    subprocess.run(
        [sys.executable, "-c", script, email],
        input=password.encode(),  # not on the command line, where ps would show it
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )


@pytest.fixture
def shared_redis_url() -> Iterator[str]:
    url = os.environ.get("FIELDLINK_REDIS_URL") or DEFAULT_SHARED_REDIS
    store = redis.Redis.from_url(url)
    store.flushdb()  # no counters from an earlier run
    yield url
    store.flushdb()
    store.close()


@pytest.fixture
def two_servers(tmp_path: Path, shared_redis_url: str) -> Iterator[tuple[RunningServer, ...]]:
    var_dir = tmp_path / "var"  # one SQLite file and one local CA for both processes
    with postgres_database_for_server() as database_url:
        env = {"FIELDLINK_REDIS_URL": shared_redis_url}
        if database_url:
            env["FIELDLINK_DATABASE_URL"] = database_url
        # One after the other: the first migrates the database and makes the CA.
        with run_server(var_dir, env) as first, run_server(var_dir, env) as second:
            yield first, second


def test_failed_sign_ins_are_limited_across_two_server_processes(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    first, second = two_servers
    assert first.https_port != second.https_port
    assert first.process.pid != second.process.pid
    email = "shared-limit@plant.example"
    create_verified_user(first, email, PASSWORD)

    with first.client() as one, second.client() as two:
        # Alternate: three failures on the first server, two on the second.
        for attempt in range(ACCOUNT_LIMIT):
            client = (one, two)[attempt % 2]
            response = sign_in_over_https(client, email, WRONG_PASSWORD)
            assert response.status_code == 200, (attempt, response.status_code)
            assert "not correct" in response.text

        # The sixth attempt, counting both servers, is refused on either one, even with the
        # right password.
        for client in (two, one):
            refused = sign_in_over_https(client, email, PASSWORD)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) > 0
            assert "__Host-fieldlink-session" not in refused.cookies
            assert client.get("/api/v1/me").status_code == 401
