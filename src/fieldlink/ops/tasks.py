"""Background tasks of the ops context (django-tasks)."""

from __future__ import annotations

from django_tasks import task


@task()
def ping(message: str) -> str:
    """A no-op round trip through the queue; operators use it to check that a worker runs."""
    return f"pong: {message}"
