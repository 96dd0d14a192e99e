from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldlink.kit.logging import (
    build_formatter,
    configure_logging,
    get_logger,
    is_configured,
    reset_logging,
)
from fieldlink.kit.redaction import REDACTED

Canary = Callable[[str], str]
UVICORN_ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    reset_logging()
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    raw = stream.getvalue().splitlines()
    assert all(line.strip() for line in raw), "no blank or partial lines"
    return [json.loads(line) for line in raw]


def fail(exc: Exception) -> None:
    raise exc


def only_line(stream: io.StringIO) -> dict[str, Any]:
    (line,) = lines(stream)
    return line


def test_stdlib_record_is_formatted_then_redacted(output: io.StringIO, canary: Canary) -> None:
    secret = canary("password")
    logging.getLogger("fieldlink.test.plain").warning(
        "sign-in failed for %s with password=%s", "bob", secret
    )
    line = only_line(output)
    assert line["event"] == f"sign-in failed for bob with password={REDACTED}"
    assert line["logger"] == "fieldlink.test.plain"
    assert line["level"] == "warning"
    assert secret not in output.getvalue()


def test_timestamps_are_iso_8601_utc(output: io.StringIO) -> None:
    logging.getLogger("fieldlink.test").info("tick")
    stamp = dt.datetime.fromisoformat(only_line(output)["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)


def test_structlog_fields_and_strings_are_redacted(output: io.StringIO, canary: Canary) -> None:
    password, token = canary("password"), canary("token")
    get_logger("fieldlink.test.svc").info(
        "signed in",
        user="bob",
        password=password,
        callback=f"https://app.example/cb?token={token}&page=2",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/html"},
    )
    line = only_line(output)
    assert line["event"] == "signed in"
    assert line["user"] == "bob"
    assert line["password"] == REDACTED
    assert line["callback"] == f"https://app.example/cb?token={REDACTED}&page=2"
    assert line["headers"] == {"Authorization": REDACTED, "Accept": "text/html"}
    assert line["logger"] == "fieldlink.test.svc"
    assert password not in output.getvalue()
    assert token not in output.getvalue()


def test_structlog_positional_arguments_are_redacted(output: io.StringIO, canary: Canary) -> None:
    secret = canary("otp")
    get_logger("fieldlink.test.svc").info("verifying otp=%s for %s", secret, "bob")
    assert only_line(output)["event"] == f"verifying otp={REDACTED} for bob"


def test_uvicorn_access_record_gets_structured_fields_and_a_scrubbed_path(
    output: io.StringIO, canary: Canary
) -> None:
    secret = canary("token")
    logging.getLogger("uvicorn.access").info(
        UVICORN_ACCESS_FORMAT, "127.0.0.1:50123", "GET", f"/cb?token={secret}&page=2", "1.1", 200
    )
    line = only_line(output)
    assert line["client"] == "127.0.0.1:50123"
    assert line["method"] == "GET"
    assert line["path"] == f"/cb?token={REDACTED}&page=2"
    assert line["http_version"] == "1.1"
    assert line["status"] == 200
    assert line["event"] == f'127.0.0.1:50123 - "GET /cb?token={REDACTED}&page=2 HTTP/1.1" 200'
    assert "positional_args" not in line
    assert secret not in output.getvalue()


def test_uvicorn_access_record_without_secrets_keeps_its_fields(output: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info(
        UVICORN_ACCESS_FORMAT, "10.0.0.5:4000", "POST", "/api/v1/telemetry", "2", 202
    )
    line = only_line(output)
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "10.0.0.5:4000",
        "POST",
        "/api/v1/telemetry",
        202,
    )


def test_uvicorn_loggers_are_routed_through_the_root_handler() -> None:
    access = logging.getLogger("uvicorn.access")
    stray = logging.StreamHandler(io.StringIO())
    access.addHandler(stray)
    access.propagate = False
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging(stream=stream)
        assert stray not in access.handlers
        assert access.propagate
        access.info(UVICORN_ACCESS_FORMAT, "127.0.0.1:1", "GET", "/", "1.1", 200)
        assert only_line(stream)["logger"] == "uvicorn.access"
    finally:
        reset_logging()
        root.setLevel(level)
        access.removeHandler(stray)
        access.propagate = True


@pytest.mark.parametrize("name", ["uvicorn.error", "django", "django.request", "asyncio"])
def test_third_party_loggers_pass_the_same_layer(
    output: io.StringIO, canary: Canary, name: str
) -> None:
    secret = canary("cookie")
    logging.getLogger(name).error("request failed\nCookie: sessionid=%s", secret)
    line = only_line(output)
    assert line["logger"] == name
    assert line["event"] == f"request failed\nCookie: {REDACTED}"


def test_traceback_is_formatted_then_redacted(output: io.StringIO, canary: Canary) -> None:
    secret = canary("password")
    try:
        fail(ConnectionError(f"cannot reach postgres://u:{secret}@db/fl (password={secret})"))
    except ConnectionError:
        logging.getLogger("fieldlink.test").exception("database down")
    line = only_line(output)
    assert line["event"] == "database down"
    assert "Traceback (most recent call last)" in line["exception"]
    assert f"ConnectionError: cannot reach postgres://u:{REDACTED}@db/fl" in line["exception"]
    assert f"password={REDACTED}" in line["exception"]
    assert secret not in output.getvalue()


def test_structlog_traceback_is_redacted(output: io.StringIO, canary: Canary) -> None:
    secret = canary("token")
    try:
        fail(ValueError(f"bad header Authorization: Bearer {secret}"))
    except ValueError:
        get_logger("fieldlink.test").exception("rejected", device="d1")
    line = only_line(output)
    assert "ValueError: bad header Authorization: " + REDACTED in line["exception"]
    assert line["device"] == "d1"
    assert secret not in output.getvalue()


def test_stack_info_is_redacted(output: io.StringIO) -> None:
    logging.getLogger("fieldlink.test").info("where am I", stack_info=True)
    assert "test_stack_info_is_redacted" in only_line(output)["stack"]


def test_a_newline_in_a_user_value_does_not_make_a_second_line(output: io.StringIO) -> None:
    forged = 'bob\n{"level": "critical", "event": "admin signed in"}\r\n'
    logging.getLogger("fieldlink.test").info("signed in: %s", forged)
    get_logger("fieldlink.test").info("signed in", user=forged)
    first, second = lines(output)
    assert first["event"] == f"signed in: {forged}"
    assert second["user"] == forged


def test_extra_fields_and_odd_values_are_rendered_and_redacted(
    output: io.StringIO, canary: Canary
) -> None:
    secret = canary("password")

    class Request:
        def __str__(self) -> str:
            return f"<ASGIRequest: GET '/login?password={secret}'>"

    logging.getLogger("django.request").warning(
        "Not Found: %s", "/login", extra={"status_code": 404, "request": Request()}
    )
    get_logger("fieldlink.test").info(
        "odd values",
        when=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        tags={"a"},
        ratio=math.nan,
        raw=b"bytes",
        error=ValueError(f"password={secret}"),
    )
    django_line, odd = lines(output)
    assert django_line["status_code"] == 404
    assert django_line["request"] == f"<ASGIRequest: GET '/login?password={REDACTED}'>"
    assert odd["when"] == "2025-01-02T03:04:05+00:00"
    assert odd["tags"] == ["a"]
    assert odd["ratio"] == "nan"
    assert odd["raw"] == "b'bytes'"
    assert odd["error"] == f"ValueError('password={REDACTED}')"
    assert secret not in output.getvalue()


def test_records_are_redacted_for_handlers_we_do_not_own(
    output: io.StringIO, caplog: pytest.LogCaptureFixture, canary: Canary
) -> None:
    secret = canary("password")
    try:
        fail(RuntimeError(f"password={secret}"))
    except RuntimeError:
        logging.getLogger("fieldlink.test").exception("form password=%s", secret)
    assert caplog.records[0].getMessage() == f"form password={REDACTED}"
    assert secret not in caplog.text
    assert f"RuntimeError: password={REDACTED}" in caplog.text
    assert secret not in output.getvalue()


def test_a_structlog_logger_redacts_even_before_logging_is_configured(
    caplog: pytest.LogCaptureFixture, canary: Canary
) -> None:
    secret = canary("api_key")
    get_logger("fieldlink.test.early").warning("calling out", api_key=secret)
    assert caplog.records
    assert secret not in caplog.text


def test_configuring_twice_does_not_double_the_output(output: io.StringIO) -> None:
    configure_logging("INFO", stream=output)
    root = logging.getLogger()
    assert sum(1 for h in root.handlers if h.formatter is build_formatter()) == 1
    logging.getLogger("fieldlink.test").info("once")
    assert len(lines(output)) == 1
    assert is_configured()


def test_level_is_applied(output: io.StringIO) -> None:
    configure_logging("WARNING", stream=output)
    logging.getLogger("fieldlink.test").info("hidden")
    get_logger("fieldlink.test").info("hidden too")
    logging.getLogger("fieldlink.test").warning("shown")
    assert [line["event"] for line in lines(output)] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")


def test_log_file_is_created_owner_only_and_appended(tmp_path: Path, output: io.StringIO) -> None:
    log_file = tmp_path / "var" / "log" / "fieldlink.log"
    configure_logging(log_file=log_file, stream=output)
    logging.getLogger("fieldlink.test").info("first")
    configure_logging(log_file=log_file, stream=output)
    logging.getLogger("fieldlink.test").info("second")
    reset_logging()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert events == ["first", "second"]
    assert [line["event"] for line in lines(output)] == ["first", "second"]


def test_an_existing_world_readable_log_file_is_tightened(
    tmp_path: Path, output: io.StringIO
) -> None:
    log_file = tmp_path / "fieldlink.log"
    log_file.write_text("")
    log_file.chmod(0o644)
    configure_logging(log_file=log_file, stream=output)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_reset_logging_removes_only_our_handlers(output: io.StringIO) -> None:
    root = logging.getLogger()
    before = [h for h in root.handlers if h.formatter is not build_formatter()]
    reset_logging()
    assert root.handlers == before
    assert not is_configured()
