"""The log canary: the test suite fails if a registered secret shows up in any log it wrote.

Register secrets with ``register_canary(secret)`` or the ``canary`` fixture
(``canary("password")`` returns a fresh registered secret). Processes started by tests inherit
``FIELDLINK_TEST_LOG_DIR``: they write their logs there, and may register secrets of their own
in ``*.canaries`` files there (one secret per line).

Swept at the end of the session:

* every log record of this process, rendered by ``fieldlink.kit.logging``'s formatter when that
  is configured (the point is to show secrets do not survive our layer), or as the raw message
  and traceback when it is not (then nothing stands between the secret and the output);
* every captured stdout, stderr and log section and failure report of every test;
* every file under ``FIELDLINK_TEST_LOG_DIR`` and the files of ``var/log`` changed this session.

Findings name the first 12 characters of the secret and where it was found, never the secret.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

LOG_DIR_ENV = "FIELDLINK_TEST_LOG_DIR"
CANARY_FILE_SUFFIX = ".canaries"
_MIN_LENGTH = 12
_SHOWN = 12
_MAX_LOCATIONS_SHOWN = 10

_canaries: set[str] = set()
_texts: dict[str, list[str]] = {}


class _Session:
    log_dir: Path | None = None
    created_log_dir = False
    previous_env: str | None = None
    previous_root_level: int | None = None
    handler: logging.Handler | None = None
    current_test: str | None = None
    started = 0.0
    keep_log_dir = False


_session = _Session()


def register_canary(secret: str) -> str:
    # Short secrets would turn up by coincidence and make the canary cry wolf.
    if len(secret) < _MIN_LENGTH:
        raise ValueError(f"a canary needs at least {_MIN_LENGTH} characters")
    _canaries.add(secret)
    return secret


@pytest.fixture
def canary() -> Callable[[str], str]:
    def make(label: str = "secret") -> str:
        return register_canary(f"CANARY-{label}-{secrets.token_hex(16)}")

    return make


def _remember(location: str, text: str) -> None:
    if text:
        _texts.setdefault(location, []).append(text)


# --- (a) every log record of this process ------------------------------------------------------


def _fieldlink_logging() -> ModuleType | None:
    try:
        import fieldlink.kit.logging as fieldlink_logging  # noqa: PLC0415 -- may not be importable
    except ImportError:
        return None
    return fieldlink_logging


def _raw(record: logging.LogRecord) -> str:
    parts = [record.getMessage()]
    if record.exc_info and record.exc_info[0] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


class _CanaryHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            module = _fieldlink_logging()
            if module is not None and module.is_configured():
                text = module.build_formatter().format(record)
            else:
                text = _raw(record)
        except Exception as exc:  # noqa: BLE001 -- a log record must never fail a test from here
            text = f"{record.msg!r} {record.args!r} (unrenderable: {exc!r})"
        during = _session.current_test or "outside any test"
        _remember(f"log record of logger {record.name!r} during {during}", text)


# --- hooks ---------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    _session.started = time.time()
    _session.previous_env = os.environ.get(LOG_DIR_ENV)
    if _session.previous_env:
        _session.log_dir = Path(_session.previous_env)
        _session.log_dir.mkdir(parents=True, exist_ok=True)
    else:
        _session.log_dir = Path(tempfile.mkdtemp(prefix="fieldlink-test-logs-"))
        _session.created_log_dir = True
        os.environ[LOG_DIR_ENV] = str(_session.log_dir)

    root = logging.getLogger()
    # INFO is what production writes by default; records below the root level never reach a
    # handler, so without this an INFO line carrying a secret would go unnoticed.
    if root.level > logging.INFO or root.level == logging.NOTSET:
        _session.previous_root_level = root.level
        root.setLevel(logging.INFO)
    _session.handler = _CanaryHandler()
    root.addHandler(_session.handler)


def pytest_runtest_logstart(nodeid: str) -> None:
    _session.current_test = nodeid


def pytest_runtest_logfinish() -> None:
    _session.current_test = None


def _collect_report(
    report: pytest.TestReport | pytest.CollectReport, what: str, phase: str | None = None
) -> None:
    where = report.nodeid or "<session>"
    for title, content in report.sections:
        # A test's later reports repeat the sections of its earlier phases.
        if phase is None or title.endswith(f" {phase}"):
            _remember(f"{what} {where}: {title}", content)
    if report.failed and report.longrepr is not None:
        _remember(f"{what} {where}: failure report", report.longreprtext)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _collect_report(report, "test", report.when)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _collect_report(report, "collection of")


def _swept_files(config: pytest.Config) -> Iterator[Path]:
    if _session.log_dir is not None and _session.log_dir.is_dir():
        for path in sorted(_session.log_dir.rglob("*")):
            if path.is_file() and not path.name.endswith(CANARY_FILE_SUFFIX):
                yield path
    var_log = config.rootpath / "var" / "log"
    if var_log.is_dir():
        # Older files there come from earlier runs and cannot hold this session's secrets.
        for path in sorted(var_log.rglob("*")):
            if path.is_file() and path.stat().st_mtime >= _session.started - 1:
                yield path


def _all_canaries() -> set[str]:
    found = set(_canaries)
    if _session.log_dir is not None and _session.log_dir.is_dir():
        for path in _session.log_dir.rglob(f"*{CANARY_FILE_SUFFIX}"):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            found.update(line.strip() for line in lines if len(line.strip()) >= _MIN_LENGTH)
    return found


def _variants(secret: str) -> set[str]:
    # As written, as escaped inside a JSON string, and as percent-encoded in a URL or form.
    return {
        secret,
        json.dumps(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    }


def _findings(config: pytest.Config) -> dict[str, list[str]]:
    canaries = _all_canaries()
    if not canaries:
        return {}
    variants = {secret: _variants(secret) for secret in canaries}
    found: dict[str, list[str]] = {}

    def check(location: str, text: str) -> None:
        for secret, forms in variants.items():
            if any(form in text for form in forms):
                found.setdefault(secret, []).append(location)

    for location, texts in _texts.items():
        check(location, "\n".join(texts))
    for path in _swept_files(config):
        check(f"file {path}", path.read_bytes().decode("utf-8", errors="replace"))
    return found


def _describe(found: dict[str, list[str]]) -> list[str]:
    lines = [f"{len(found)} registered secret(s) found in what this test session logged:"]
    for secret, locations in sorted(found.items()):
        shown = locations[:_MAX_LOCATIONS_SHOWN]
        more = len(locations) - len(shown)
        lines.append(f"  canary {secret[:_SHOWN]}… found in:")
        lines += [f"    - {location}" for location in shown]
        if more:
            lines.append(f"    - and {more} more")
    return lines


def _write(session: pytest.Session, lines: list[str], *, red: bool) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        sys.stderr.write("log canary: " + "\n".join(lines) + "\n")
        return
    # The progress line of -q is still open when sessionfinish runs.
    reporter.write_line("")
    reporter.write_sep("=", "log canary", red=red, bold=red)
    for line in lines:
        reporter.write_line(line, red=red)


# trylast: session-scoped fixtures (servers started for the whole session) are torn down in the
# runner's own pytest_sessionfinish, and their last log lines must be swept too. Still inside the
# terminal reporter's wrapper, so the report lands before the final summary line.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    found = _findings(session.config)
    lines = _describe(found) if found else []
    if found and session.exitstatus in passing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # The logs of servers started by tests are what one reads first when a run goes wrong.
    _session.keep_log_dir = session.exitstatus not in passing
    if _session.keep_log_dir and _session.created_log_dir:
        lines.append(f"test logs kept in {_session.log_dir}")
    if lines:
        _write(session, lines, red=bool(found))


def pytest_unconfigure() -> None:
    root = logging.getLogger()
    if _session.handler is not None:
        root.removeHandler(_session.handler)
        _session.handler = None
    if _session.previous_root_level is not None and root.level == logging.INFO:
        root.setLevel(_session.previous_root_level)
    if _session.created_log_dir:
        if _session.previous_env is None:
            os.environ.pop(LOG_DIR_ENV, None)
        if _session.log_dir is not None and not _session.keep_log_dir:
            shutil.rmtree(_session.log_dir, ignore_errors=True)
