from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXED = "CANARY-fixed-0123456789abcdef0123456789"


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner session gets a log directory of its own: the outer canary must not see (or
    # sweep) what the inner tests plant on purpose.
    monkeypatch.setenv("FIELDLINK_TEST_LOG_DIR", str(pytester.path / "logs"))
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    return pytester


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "tests.plugins.log_canary", "-p", "no:django", "-p", "no:cacheprovider", "-q"
    )


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def test_canary_printed_by_a_passing_test_fails_the_session(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_leak=f"""
        from tests.plugins.log_canary import register_canary

        def test_leak():
            print("debug:", register_canary("{FIXED}"))
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= log canary =*",
            f"*canary {FIXED[:12]}… found in:",
            "*- test test_leak.py::test_leak: Captured stdout call",
        ]
    )
    assert FIXED not in output(result), "the report never prints the whole secret"


def test_canary_in_a_log_file_of_the_log_directory_fails_the_session(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_server="""
        import os
        from pathlib import Path

        def test_server_writes_its_log(canary):
            secret = canary("password")
            log = Path(os.environ["FIELDLINK_TEST_LOG_DIR"]) / "server-1.log"
            log.write_text('{"event": "boot", "pw": "%s"}\\n' % secret)
        """
    )
    result = run(inner)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*canary CANARY-passw… found in:", "*- file */logs/server-1.log"])


def test_canary_registered_by_another_process_is_checked(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_worker="""
        import subprocess
        import sys

        WORKER = '''
        import os
        from pathlib import Path
        logs = Path(os.environ["FIELDLINK_TEST_LOG_DIR"])
        secret = "WORKER-SECRET-" + "9f" * 12
        (logs / "worker.canaries").write_text(secret + "\\\\n")
        (logs / "worker.log").write_text("using " + secret + "\\\\n")
        '''

        def test_worker_process():
            subprocess.run([sys.executable, "-c", WORKER.replace("\\n        ", "\\n")], check=True)
        """
    )
    result = run(inner)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*canary WORKER-SECRE… found in:", "*- file */logs/worker.log"])
    assert "worker.canaries" not in result.stdout.str(), "registration files are not logs"


def test_logs_written_while_session_fixtures_are_torn_down_are_swept(
    inner: pytest.Pytester,
) -> None:
    inner.makeconftest(
        """
        import os
        from pathlib import Path

        import pytest

        from tests.plugins.log_canary import register_canary

        @pytest.fixture(scope="session")
        def server():
            yield
            secret = register_canary("CANARY-teardown-0123456789abcdef")
            (Path(os.environ["FIELDLINK_TEST_LOG_DIR"]) / "shutdown.log").write_text(secret)
        """
    )
    inner.makepyfile(test_uses_server="def test_uses_server(server):\n    pass\n")
    result = run(inner)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*canary CANARY-teard… found in:", "*- file */shutdown.log"])


def test_raw_log_record_is_caught_when_our_logging_is_not_configured(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_raw=f"""
        import logging
        from tests.plugins.log_canary import register_canary

        def test_raw():
            logging.getLogger("some.lib").info("value %s", register_canary("{FIXED}"))
        """
    )
    result = run(inner)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            f"*canary {FIXED[:12]}… found in:",
            "*log record of logger 'some.lib' during test_raw.py::test_raw",
        ]
    )


def test_canaries_logged_through_our_layer_are_redacted_and_the_session_passes(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        test_redacted="""
        import logging
        import os
        from pathlib import Path

        from fieldlink.kit.logging import configure_logging, get_logger

        def fail(exc):
            raise exc

        def test_logged_through_our_layer(canary):
            log_file = Path(os.environ["FIELDLINK_TEST_LOG_DIR"]) / "app.log"
            configure_logging("INFO", log_file=log_file)
            password, token = canary("password"), canary("token")
            get_logger("inner").info(
                "sign-in", password=password, next=f"https://app.example/cb?token={token}&p=2"
            )
            logging.getLogger("inner.plain").warning("form body user=bob&password=%s", password)
            logging.getLogger("uvicorn.access").info(
                '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/cb?token={token}", "1.1", 200
            )
            try:
                fail(ValueError(f"password={password}"))
            except ValueError:
                logging.getLogger("inner").exception("failed")
            text = log_file.read_text()
            print(text)
            assert len(text.splitlines()) == 4
            assert text.count("[REDACTED]") >= 5
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "log canary" not in output(result)


@pytest.mark.parametrize(("outcome", "kept"), [("True", False), ("False", True)])
def test_the_log_directory_it_made_is_removed_only_after_a_clean_session(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, outcome: str, kept: bool
) -> None:
    monkeypatch.delenv("FIELDLINK_TEST_LOG_DIR")
    inner.makepyfile(
        test_dir=f"""
        import os

        def test_dir():
            print("LOGDIR=" + os.environ["FIELDLINK_TEST_LOG_DIR"])
            assert {outcome}
        """
    )
    result = inner.runpytest_subprocess("-p", "tests.plugins.log_canary", "-p", "no:django", "-s")
    found = re.search(r"LOGDIR=(\S+)", result.stdout.str())
    assert found is not None
    log_dir = Path(found[1])
    try:
        assert log_dir.is_dir() is kept
        assert (f"test logs kept in {log_dir}" in result.stdout.str()) is kept
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
