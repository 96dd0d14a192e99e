"""Sign-in benchmark: sign-in throughput and latency, and whether bcrypt starves other requests.

Starts a real ``fieldlink serve`` (HTTPS, a throw-away var dir, 127.0.0.1 only), creates a user
and an API key, then measures in one run:

  a. sign-in (correct password): latency sequentially, throughput with 4 concurrent clients;
  b. reference: p50/p99 of ``GET /api/v1/me`` with the API key, on an idle server;
  c1. the same API call while 20 clients hammer sign-in with wrong passwords from ONE address
      (unknown e-mails, a new one per attempt): the per-IP limits trip within seconds and most
      attempts get a cheap 429;
  c2. the same while 20 clients hammer from many addresses (a botnet behind the trusted proxy:
      each attempt names a new X-Forwarded-For address and a new unknown e-mail), so no limit
      trips and every attempt costs a full bcrypt hash: the worst case.

Ratios p99(c)/p99(b) are printed. The server trusts X-Forwarded-For from 127.0.0.1 only
(``FIELDLINK_TRUSTED_PROXIES``), as it would behind a TLS-terminating proxy.

    .venv/bin/python bench/sign_in.py [--hammer-seconds 15] [--api-calls 200]

Bounded: every phase stops after its count or its time, the whole run after ``--deadline``.
Set FIELDLINK_DATABASE_URL / FIELDLINK_REDIS_URL to run on PostgreSQL / Redis.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server import RunningServer, run_server  # noqa: E402 -- needs the path above

# A bench account on a throw-away server; fresh secrets each run.
PASSWORD = secrets.token_urlsafe(24)
WRONG = secrets.token_urlsafe(24)
EMAIL = "bench@plant.example"
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, status: int) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.statuses[status] += 1

    def p(self, percentile: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[percentile - 1]

    def ms(self, percentile: int) -> str:
        return f"{self.p(percentile) * 1000:.1f}"


def create_user_and_key(server: RunningServer) -> str:
    script = textwrap.dedent(
        """
        import sys
        import django
        django.setup()
        from allauth.account.models import EmailAddress
        from fieldlink.accounts.models import ApiKeyScope, User
        from fieldlink.accounts.services import create_api_key
        email, password = sys.argv[1], sys.stdin.read()
        user = User.objects.create_user(email=email, password=password)
        EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
        print(create_api_key(user, name="bench", scope=ApiKeyScope.READ).secret)
        """
    )
    env = {**server.env, "DJANGO_SETTINGS_MODULE": "fieldlink.cloud.django_settings"}
    done = subprocess.run(
        [sys.executable, "-c", script, EMAIL],
        input=PASSWORD.encode(),
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    return done.stdout.decode().strip().splitlines()[-1]


class SignInClient:
    """One browser: fetches the form once (CSRF cookie and token), then posts it."""

    def __init__(self, server: RunningServer, forwarded_for: str | None = None) -> None:
        self.client = server.client()
        self.forwarded_for = forwarded_for
        page = self.client.get("/accounts/login/", headers=self._headers())
        match = _CSRF_INPUT.search(page.text)
        if not match:
            raise RuntimeError(f"no sign-in form: {page.status_code}")
        self.token = match.group(1)

    def _headers(self, forwarded_for: str | None = None) -> dict[str, str]:
        headers = {"Origin": str(self.client.base_url).rstrip("/")}
        if forwarded_for or self.forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for or self.forwarded_for or ""
        return headers

    def post(self, email: str, password: str, forwarded_for: str | None = None) -> httpx.Response:
        return self.client.post(
            "/accounts/login/",
            data={"csrfmiddlewaretoken": self.token, "login": email, "password": password},
            headers=self._headers(forwarded_for),
        )

    def close(self) -> None:
        self.client.close()


_address = 0
_address_lock = threading.Lock()


def next_address() -> str:
    global _address  # noqa: PLW0603 -- one sequence for the whole run
    with _address_lock:
        _address += 1
        n = _address
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def timed(call: Callable[[], httpx.Response], samples: Samples) -> None:
    started = time.perf_counter()
    try:
        status = call().status_code
    except httpx.HTTPError:
        samples.errors += 1
        return
    samples.add(time.perf_counter() - started, status)


def sign_ins_sequential(server: RunningServer, count: int, deadline: float) -> Samples:
    samples = Samples()
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        browser = SignInClient(server, forwarded_for=next_address())
        timed(partial(browser.post, EMAIL, PASSWORD), samples)
        browser.close()
    return samples


def sign_ins_concurrent(
    server: RunningServer, clients: int, each: int, deadline: float
) -> tuple[Samples, float]:
    samples = Samples()

    def run() -> None:
        for _ in range(each):
            if time.monotonic() > deadline:
                return
            browser = SignInClient(server, forwarded_for=next_address())
            timed(partial(browser.post, EMAIL, PASSWORD), samples)
            browser.close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


API_CALLS_PER_SECOND = 20  # paced, so that every phase samples its whole window alike


def api_calls(server: RunningServer, api_key: str, count: int, seconds: float) -> Samples:
    samples = Samples()
    with server.client(headers={"Authorization": f"Bearer {api_key}"}) as client:
        client.get("/api/v1/me")  # the connection and TLS session, not measured
        started = time.monotonic()
        for number in range(count):
            if time.monotonic() - started > seconds:
                break
            timed(partial(client.get, "/api/v1/me"), samples)
            pause = started + (number + 1) / API_CALLS_PER_SECOND - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    return samples


def hammer_while_measuring(
    server: RunningServer,
    api_key: str,
    *,
    clients: int,
    seconds: float,
    max_calls: int,
    many_addresses: bool,
) -> tuple[Samples, Samples]:
    hammer = Samples()
    stop = threading.Event()

    def attack() -> None:
        browser = SignInClient(server, forwarded_for=next_address() if many_addresses else None)
        try:
            while not stop.is_set():
                email = f"guess-{secrets.token_hex(6)}@plant.example"
                address = next_address() if many_addresses else None
                timed(partial(browser.post, email, WRONG, forwarded_for=address), hammer)
        finally:
            browser.close()

    threads = [threading.Thread(target=attack) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let the attack reach full speed
    measured = api_calls(server, api_key, max_calls, seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return measured, hammer


@dataclass
class Cpu:
    """Wall time and CPU seconds of the server and of this (client) process over one phase."""

    pid: int
    wall: float = 0.0
    server: float = 0.0
    client: float = 0.0

    def _server_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Cpu:
        self._wall, self._server, times = time.monotonic(), self._server_seconds(), os.times()
        self._client = times.user + times.system
        return self

    def __exit__(self, *_: object) -> None:
        times = os.times()
        self.wall = time.monotonic() - self._wall
        self.server = self._server_seconds() - self._server
        self.client = times.user + times.system - self._client

    def __str__(self) -> str:
        return (
            f"{self.wall:.1f} s wall; CPU: server {self.server:.1f} s "
            f"({self.server / self.wall:.2f} cores), bench client {self.client:.1f} s "
            f"({self.client / self.wall:.2f} cores)"
        )


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    backend = "PostgreSQL" if os.environ.get("FIELDLINK_DATABASE_URL") else "SQLite"
    cache = "Redis" if os.environ.get("FIELDLINK_REDIS_URL") else "in-process cache"
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {backend}, {cache}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sign-ins", type=int, default=10, help="sequential sign-ins (a)")
    parser.add_argument("--concurrent-clients", type=int, default=4)
    parser.add_argument("--concurrent-each", type=int, default=5)
    parser.add_argument("--api-calls", type=int, default=300, help="most API calls per phase")
    parser.add_argument("--reference-seconds", type=float, default=10.0, help="phase (b)")
    parser.add_argument("--hammer-clients", type=int, default=20)
    parser.add_argument("--hammer-seconds", type=float, default=15.0, help="phases (c1), (c2)")
    parser.add_argument("--deadline", type=float, default=240.0, help="whole run, seconds")
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.deadline

    with tempfile.TemporaryDirectory(prefix="fieldlink-bench-") as tmp:
        os.environ.setdefault("FIELDLINK_TEST_LOG_DIR", tmp)
        env = {"FIELDLINK_TRUSTED_PROXIES": "127.0.0.1/32"}
        with run_server(Path(tmp) / "var", env) as server:
            api_key = create_user_and_key(server)
            pid = server.process.pid
            print(f"machine: {machine()}")
            print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
            print(f"server: {server.base_url} (pid {pid})")

            with Cpu(pid) as a_seq_cpu:
                a_seq = sign_ins_sequential(server, args.sign_ins, deadline)
            with Cpu(pid) as a_conc_cpu:
                a_conc, a_conc_wall = sign_ins_concurrent(
                    server, args.concurrent_clients, args.concurrent_each, deadline
                )
            with Cpu(pid) as b_cpu:
                b = api_calls(server, api_key, args.api_calls, args.reference_seconds)
            hammered = []
            for many in (False, True):
                with Cpu(pid) as cpu:
                    measured, hammer = hammer_while_measuring(
                        server,
                        api_key,
                        clients=args.hammer_clients,
                        seconds=args.hammer_seconds,
                        max_calls=args.api_calls,
                        many_addresses=many,
                    )
                hammered.append((many, measured, hammer, cpu))

    print("\n(a) sign-in, correct password")
    print(
        f"    sequential: {a_seq.statuses[302]}/{len(a_seq.latencies)} signed in, "
        f"p50 {a_seq.ms(50)} ms, p99 {a_seq.ms(99)} ms, "
        f"{len(a_seq.latencies) / max(sum(a_seq.latencies), 1e-9):.2f} sign-ins/s; {a_seq_cpu}"
    )
    print(
        f"    {args.concurrent_clients} concurrent: {a_conc.statuses[302]}/"
        f"{len(a_conc.latencies)} signed in, p50 {a_conc.ms(50)} ms, p99 {a_conc.ms(99)} ms, "
        f"{len(a_conc.latencies) / a_conc_wall:.2f} sign-ins/s; {a_conc_cpu}"
    )
    print(f"(b) GET /api/v1/me with an API key, {API_CALLS_PER_SECOND}/s, no attack (reference)")
    print(
        f"    {len(b.latencies)} calls {dict(b.statuses)}: p50 {b.ms(50)} ms, "
        f"p99 {b.ms(99)} ms; {b_cpu}"
    )
    for many, measured, hammer, cpu in hammered:
        where = "many addresses (c2)" if many else "one address (c1)"
        print(f"(c) the same while {args.hammer_clients} clients hammer sign-in from {where}")
        print(
            f"    {len(measured.latencies)} calls {dict(measured.statuses)}: "
            f"p50 {measured.ms(50)} ms, p99 {measured.ms(99)} ms; "
            f"p50(c)/p50(b) {measured.p(50) / b.p(50):.1f}, "
            f"p99(c)/p99(b) {measured.p(99) / b.p(99):.1f}"
        )
        print(
            f"    hammer: {len(hammer.latencies)} attempts {dict(sorted(hammer.statuses.items()))}"
            f", errors {hammer.errors}, p50 {hammer.ms(50)} ms; {cpu}"
        )
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
