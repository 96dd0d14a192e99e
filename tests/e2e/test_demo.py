"""What ``./dev run`` promises, end to end: ``fieldlink demo`` starts the cloud, a simulated
plant on real Modbus TCP and OPC UA servers, and an edge agent enrolled with a one-time code; the
admin's generated password is printed once; a new user signs in on a phone and sees the plant's
live values within seconds, discovered by the agent; the running agent listens on nothing.

The demo gets the session server's TLS directory, so the browser's certificate pin fits it.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.test_accounts import open_device, sign_in_with_password
from tests.e2e.test_organisations import PHONE_OPTIONS, OrgPhone
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer, free_port, subprocess_env

pytestmark = [pytest.mark.e2e]

PASSWORD_LINE = re.compile(r"Password \(shown this once, not stored anywhere\): (\S+)")
EMAIL_LINE = re.compile(r"Sign in as (\S+)")


class Demo:
    def __init__(self, process: subprocess.Popen[str], server: RunningServer) -> None:
        self.process = process
        self.server = server
        self.output: list[str] = []

    def read_until(self, pattern: re.Pattern[str], timeout: float = 120) -> re.Match[str]:
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        with selector:
            return self._read(selector, pattern, deadline)

    def _read(
        self, selector: selectors.BaseSelector, pattern: re.Pattern[str], deadline: float
    ) -> re.Match[str]:
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            if not selector.select(timeout=1):
                assert self.process.poll() is None, "\n".join(self.output)
                continue
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line.rstrip())
            found = pattern.search(line)
            if found:
                return found
        pytest.fail("demo output never showed " + pattern.pattern + "\n" + "\n".join(self.output))


@pytest.fixture
def demo(server: RunningServer, tmp_path: Path) -> Iterator[Demo]:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    shutil.copytree(server.var_dir / "tls", var_dir / "tls")
    https_port, http_port = free_port(), free_port()
    log_file = Path(os.environ["FIELDLINK_TEST_LOG_DIR"]) / f"demo-{https_port}.log"
    env = subprocess_env(
        FIELDLINK_VAR_DIR=str(var_dir),
        FIELDLINK_BIND="127.0.0.1",
        FIELDLINK_HTTPS_PORT=str(https_port),
        FIELDLINK_HTTP_PORT=str(http_port),
        FIELDLINK_LOG_FILE=str(log_file),
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fieldlink.cli",
            "demo",
            "--modbus-port",
            str(free_port()),
            "--opcua-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningServer(var_dir, https_port, http_port, "", log_file, process, env)  # type: ignore[arg-type]
    try:
        yield Demo(process, running)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _agent(demo: Demo) -> psutil.Process:
    for child in psutil.Process(demo.process.pid).children(recursive=True):
        if "edge" in child.cmdline() and "run" in child.cmdline():
            return child
    pytest.fail("no agent process under the demo")


def test_dev_run_shows_a_new_user_the_plants_live_values_on_a_phone(
    demo: Demo, browser: Browser, artifacts: Path
) -> None:
    email = demo.read_until(EMAIL_LINE).group(1)
    password = demo.read_until(PASSWORD_LINE).group(1)
    register_canary(password)
    assert email == "admin@demo.fieldlink.localhost"
    assert len(password) >= 24

    with open_device(OrgPhone, browser, demo.server, artifacts, **PHONE_OPTIONS) as phone:
        sign_in_with_password(phone, email, password)
        page = phone.page
        phone.open("/orgs/")
        page.get_by_role("link", name="Demo plant").first.click()
        page.get_by_role("link", name="Assets", exact=True).click()
        flow = page.locator(".asset-card", has_text="FIT-101")
        # Discovered by the agent and filled with live values (the page shows "no value yet"
        # for a point without one).
        expect(flow.locator(".latest dd").first).not_to_contain_text("no value yet", timeout=30_000)
        expect(page.locator(".asset-card")).to_have_count(5)
        phone.settle()
        phone.shot("demo-01-live-values")

    agent = _agent(demo)
    supervisor = agent.parent()
    assert supervisor is not None
    assert "supervise" in supervisor.cmdline()
    for process in (agent, supervisor):
        listening = [
            c
            for c in process.net_connections(kind="all")
            if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr)  # 2: SOCK_DGRAM
        ]
        assert listening == []
    # The trust anchor for signed updates was pinned at enrollment.
    assert (demo.server.var_dir / "demo" / "tuf" / "metadata" / "root.json").exists()
    assert demo.server.log_text().count(password) == 0
