"""Background work through django-tasks: the worker that ``fieldlink serve`` runs in a thread."""

from __future__ import annotations

import time

import pytest
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from fieldlink.cloud.server import _Scheduler, _Worker
from fieldlink.ops.tasks import PERIODIC, ping

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]


def test_enqueued_task_is_run_by_the_in_process_worker() -> None:
    result = ping.enqueue("hello")
    worker = _Worker()
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result.refresh()
            if result.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
                break
            time.sleep(0.1)
    finally:
        worker.stop()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "pong: hello"


def test_scheduler_enqueues_the_periodic_tasks() -> None:
    scheduler = _Scheduler(first_delay=0.05)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        names = {task.module_path for _, task in PERIODIC}
        while time.monotonic() < deadline:
            queued = set(DBTaskResult.objects.values_list("task_path", flat=True))
            if names <= queued:
                break
            time.sleep(0.05)
    finally:
        scheduler.stop()
    assert names <= queued
