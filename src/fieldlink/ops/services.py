"""Use cases of the ops context: liveness, readiness and metrics."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import DatabaseError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "fieldlink_http_requests",
    "HTTP requests handled, by method, route and status class",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "fieldlink_http_request_duration_seconds",
    "Time from request start to response, by route",
    ["route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)


def check_readiness(alias: str = DEFAULT_DB_ALIAS) -> Readiness:
    """Ready means: the database answers and every migration on disk has been applied."""
    checks: dict[str, str] = {}
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        checks["database"] = "ok"
    except DatabaseError:
        return Readiness(False, {"database": "unreachable"})
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return Readiness(False, {**checks, "migrations": "unknown"})
    checks["migrations"] = "ok" if not plan else f"{len(plan)} pending"
    return Readiness(not plan, checks)


def metrics_token_matches(configured: str | None, presented: str | None) -> bool:
    # No configured token means metrics are off: fail closed rather than open.
    if not configured or not presented:
        return False
    return hmac.compare_digest(configured.encode(), presented.encode())


def render_metrics() -> bytes:
    return generate_latest(REGISTRY)
