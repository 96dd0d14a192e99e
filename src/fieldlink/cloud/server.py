"""``fieldlink serve``: migrations, TLS bootstrap, the HTTPS server, the redirect port, the worker.

One process serves HTTPS (the Django application behind the request guard), a plain-HTTP port
that only redirects pages, and, unless disabled, the django-tasks worker in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from fieldlink.kit.logging import get_logger
from fieldlink.kit.tls import ensure_local_pki, server_ssl_context
from fieldlink.settings import FieldlinkSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca_cert: Path | None = None
    ca_fingerprint: str | None = None


def prepare_tls(settings: FieldlinkSettings, cert: Path | None, key: Path | None) -> TLSFiles:
    """Real certificates when given; otherwise the local CA under var/tls (made on first start)."""
    cert = cert or settings.tls_cert
    key = key or settings.tls_key
    if cert is not None and key is not None:
        return TLSFiles(cert=cert, key=key)
    hosts = [h for h in settings.effective_allowed_hosts if h and not h.startswith((".", "*"))]
    hosts = [h.strip("[]") for h in hosts]
    pki = ensure_local_pki(settings.tls_dir, [*hosts, socket.gethostname().lower()])
    return TLSFiles(
        cert=pki.server_cert,
        key=pki.server_key,
        ca_cert=pki.ca_cert,
        ca_fingerprint=pki.ca_fingerprint_sha256,
    )


class _MainServer(uvicorn.Server):
    """Owns the signal handlers and tells its companions to stop with it."""

    def __init__(self, config: uvicorn.Config, companions: list[uvicorn.Server]) -> None:
        super().__init__(config)
        self.companions = companions

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        for companion in self.companions:
            companion.should_exit = True


class _CompanionServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Only one server may own SIGINT/SIGTERM; the main server forwards them.
        yield


def _uvicorn_config(
    settings: FieldlinkSettings, app: Any, port: int, **extra: Any
) -> uvicorn.Config:
    trusted = list(settings.trusted_proxies)
    return uvicorn.Config(
        app,
        host=settings.bind,
        port=port,
        # X-Forwarded-For/-Proto are believed only from the configured proxies, never by default
        # (uvicorn would otherwise trust 127.0.0.1 and FORWARDED_ALLOW_IPS from the environment).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or [],
        server_header=False,
        date_header=True,
        log_config=None,
        access_log=True,
        lifespan="off",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=16 * 1024,
        **extra,
    )


class _Worker:
    """The django-tasks database worker, run in a thread inside ``fieldlink serve``."""

    def __init__(self) -> None:
        from django_tasks_db.management.commands.db_worker import Worker  # noqa: PLC0415

        self.worker = Worker(
            queue_names=["*"],
            interval=1.0,
            batch=False,
            backend_name="default",
            startup_delay=True,
            max_tasks=None,
            worker_id=f"serve-{os.getpid()}",
            excluded_queue_names=[],
        )
        self.thread = threading.Thread(target=self.worker.run, name="tasks-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.worker.running = False
        self.thread.join(timeout=5)


class _Scheduler:
    """Enqueues the periodic tasks (``fieldlink.ops.tasks.PERIODIC``) with jitter."""

    def __init__(self, first_delay: float = 60.0) -> None:
        self.stop_event = threading.Event()
        self.first_delay = first_delay
        self.thread = threading.Thread(target=self.run, name="tasks-scheduler", daemon=True)

    def run(self) -> None:
        from django.db import close_old_connections  # noqa: PLC0415

        from fieldlink.ops.tasks import PERIODIC  # noqa: PLC0415

        # Jitter keeps replicas that started together from enqueueing in lockstep.
        due = [self.first_delay * random.uniform(0.5, 1.5) for _ in PERIODIC]  # noqa: S311
        elapsed = 0.0
        while True:
            wait = max(0.0, min(due) - elapsed)
            if self.stop_event.wait(wait):
                return
            elapsed += wait
            for index, (interval, task) in enumerate(PERIODIC):
                if due[index] <= elapsed:
                    jitter = random.uniform(0.9, 1.1)  # noqa: S311
                    next_in = interval.total_seconds() * jitter
                    try:
                        task.enqueue()
                        log.info("periodic_task_enqueued", task=task.name)
                    except Exception:
                        log.exception("periodic_task_enqueue_failed", task=task.name)
                        # A busy or briefly unreachable database must not cost a whole
                        # interval (a day for some tasks): try again after the start delay.
                        next_in = min(next_in, self.first_delay * jitter)
                    finally:
                        close_old_connections()
                    due[index] = elapsed + next_in

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def serve(
    settings: FieldlinkSettings,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", interactive=False, verbosity=0)
    log.info("migrations_applied")

    from fieldlink.cloud.asgi import application  # noqa: PLC0415
    from fieldlink.cloud.guards import HTTPSRedirect  # noqa: PLC0415

    public_port = settings.effective_public_https_port
    if settings.tls:
        tls = prepare_tls(settings, cert, key)
        context = server_ssl_context(tls.cert, tls.key)

        def factory(
            config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
        ) -> ssl.SSLContext:
            return context

        main_config = _uvicorn_config(
            settings,
            application,
            settings.https_port,
            ssl_certfile=str(tls.cert),
            ssl_context_factory=factory,
        )
        announce(f"Fieldlink is serving https://localhost:{public_port}/")
        if tls.ca_cert is not None:
            announce(f"Local CA certificate: {tls.ca_cert.resolve()}")
            announce(f"Local CA SHA-256 fingerprint: {tls.ca_fingerprint}")
            announce(
                f"Trust it:  curl --cacert {tls.ca_cert.resolve()} https://localhost:{public_port}/"
            )
    else:
        # Production only allows this behind trusted proxies that terminate TLS (settings.check).
        main_config = _uvicorn_config(settings, application, settings.https_port)
        announce(f"Fieldlink is serving behind a TLS proxy on port {settings.https_port}")

    companions: list[uvicorn.Server] = []
    if settings.http_port and settings.tls:
        redirect = HTTPSRedirect(
            allowed_hosts=settings.effective_allowed_hosts, https_port=public_port
        )
        companions.append(_CompanionServer(_uvicorn_config(settings, redirect, settings.http_port)))
        announce(f"Plain HTTP on port {settings.http_port} only redirects pages to HTTPS")
    if settings.email_host:
        announce(f"Mail goes out through SMTP at {settings.email_host}:{settings.email_port}")
    else:
        announce(f"Mail (sign-up, reset links) lands as files in {settings.outbox_dir.resolve()}")
    main = _MainServer(main_config, companions)

    worker = _Worker() if settings.run_worker else None
    scheduler = _Scheduler()
    if worker is not None:
        worker.start()
    scheduler.start()
    try:
        asyncio.run(_serve_all(main, companions))
    finally:
        scheduler.stop()
        if worker is not None:
            worker.stop()


async def _serve_all(main: uvicorn.Server, companions: list[uvicorn.Server]) -> None:
    tasks = [asyncio.create_task(server.serve()) for server in companions]
    try:
        await main.serve()
    finally:
        for server in companions:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def run_worker() -> None:
    """``fieldlink worker``: the task worker on its own, for deployments that scale it apart."""
    worker = _Worker()
    worker.worker.configure_signals()
    worker.worker.run()
