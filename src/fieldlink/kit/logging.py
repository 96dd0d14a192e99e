"""JSON-lines logging over the standard library, with one redaction layer for every record.

Everything ends up on the root logger's handlers: structlog loggers from ``get_logger``, plain
``logging`` loggers, and third-party ones (uvicorn, Django, asyncio). All of them are rendered by
the same ``ProcessorFormatter`` chain, whose last step before JSON is ``redact``.

Redaction also happens earlier, when a record is created (a log record factory) and inside the
structlog chain before a record is handed to ``logging``. That is what keeps secrets away from
handlers we do not own: pytest's log capture, Django's admin e-mails, error trackers.

Whoever starts uvicorn must pass ``log_config=None``; otherwise uvicorn installs its own handlers
again and the access log bypasses this layer.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import math
import os
import sys
from collections.abc import Mapping
from io import TextIOWrapper
from pathlib import Path
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from fieldlink.kit.redaction import redact, redact_text

__all__ = [
    "build_formatter",
    "configure_logging",
    "get_logger",
    "is_configured",
    "redact_event_dict",
    "reset_logging",
]

# Loggers that libraries give handlers of their own; cleared so their records propagate to ours.
_ROUTED_LOGGERS: Final = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "django",
    "django.server",
    "django.request",
)

_META_KEYS: Final = frozenset({"_record", "_from_structlog"})
_REDACTED_ARGS: Final = "_fieldlink_redacted_args"
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    # uvicorn's ANSI-coloured duplicate of the message
    "color_message",
}
_MAX_DEPTH: Final = 16

_installed_handlers: list[logging.Handler] = []
_previous_record_factory: Any = None
_structlog_ready = False
_configured = False
_formatter: structlog.stdlib.ProcessorFormatter | None = None


# --- processors ----------------------------------------------------------------------------------


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 -- a broken __str__ must not take the log line with it
        return f"<unprintable {type(value).__name__}>"


def _plain(value: object, depth: int = 0) -> object:
    # Everything becomes JSON-native *before* redaction: an object rendered by the JSON
    # fallback afterwards (a Django request's repr with its query string) would bypass it.
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {
                key if isinstance(key, str) else _safe_str(key): _plain(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_plain(item, depth + 1) for item in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return repr(value) if isinstance(value, BaseException) else _safe_str(value)


def redact_event_dict(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    plain = {key: _plain(value) for key, value in event_dict.items() if key not in _META_KEYS}
    redacted = redact(plain)
    for key in _META_KEYS & event_dict.keys():
        redacted[key] = event_dict[key]
    return redacted


def _add_record_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    args = event_dict.pop("positional_args", ())
    record = event_dict.get("_record")
    if not isinstance(record, logging.LogRecord):
        return event_dict
    args = getattr(record, _REDACTED_ARGS, args)
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        client, method, path, http_version, status = args
        event_dict.update(
            client=client,
            method=method,
            path=redact_text(path) if isinstance(path, str) else path,
            http_version=http_version,
            status=status,
        )
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            event_dict.setdefault(key, value)
    if "stack_info" in event_dict:
        event_dict["stack"] = event_dict.pop("stack_info")
    if "exc_info" in event_dict and record.exc_text:
        # Formatted and redacted once already, when the record was created.
        event_dict["exception"] = record.exc_text
        del event_dict["exc_info"]
    return event_dict


_timestamper: Final = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")

_SHARED: Final[tuple[Processor, ...]] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    _timestamper,
)

_STRUCTLOG_CHAIN: Final[tuple[Processor, ...]] = (
    structlog.stdlib.filter_by_level,
    *_SHARED,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
    redact_event_dict,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
)

_FOREIGN_PRE_CHAIN: Final[tuple[Processor, ...]] = (
    *_SHARED,
    _add_record_fields,
    structlog.processors.format_exc_info,
    redact_event_dict,
)


def build_formatter() -> logging.Formatter:
    global _formatter  # noqa: PLW0603 -- one formatter shared by every handler we install
    if _formatter is None:
        _formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_FOREIGN_PRE_CHAIN,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            pass_foreign_args=True,
        )
    return _formatter


def _ensure_structlog() -> None:
    global _structlog_ready  # noqa: PLW0603 -- configured once per process
    if _structlog_ready:
        return
    structlog.configure(
        processors=list(_STRUCTLOG_CHAIN),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Not cached, so structlog.testing.capture_logs and reconfiguration in tests reach
        # loggers that module globals obtained earlier.
        cache_logger_on_first_use=False,
    )
    _structlog_ready = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    # Configuring structlog here (not only in configure_logging) means a logger used before
    # logging is set up still redacts and still goes through the standard library.
    _ensure_structlog()
    return structlog.stdlib.get_logger(name)


# --- records created anywhere --------------------------------------------------------------------

_exception_formatter: Final = logging.Formatter()


def _redact_record(record: logging.LogRecord) -> None:
    msg = record.msg
    if isinstance(msg, Mapping) and not record.args:
        record.msg = redact(msg)
    else:
        try:
            text = record.getMessage()
            unformattable = False
        except Exception:  # noqa: BLE001 -- logging's own error report would print raw arguments
            text = f"{_safe_str(msg)} (log arguments did not fit: {record.args!r})"
            unformattable = True
        redacted = redact_text(text)
        if redacted != text or unformattable:
            if record.args:
                setattr(record, _REDACTED_ARGS, redact(record.args))
            record.msg = redacted
            record.args = ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact_text(_exception_formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


def _redacting_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _previous_record_factory(*args, **kwargs)
    try:
        _redact_record(record)
    except Exception:  # noqa: BLE001 -- fail closed: a record we could not redact says nothing
        record.msg, record.args = "[REDACTED: redaction failed]", ()
        record.exc_info = record.exc_text = record.stack_info = None
    return record


def _install_record_factory() -> None:
    global _previous_record_factory  # noqa: PLW0603 -- the factory we wrap, restored on reset
    current = logging.getLogRecordFactory()
    if current is not _redacting_record_factory:
        _previous_record_factory = current
        logging.setLogRecordFactory(_redacting_record_factory)


# --- handlers ------------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler[TextIO]):
    # Looks sys.stderr up on every record instead of keeping the object seen at start-up, which
    # pytest and daemonisers replace (and close) later.
    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


class _OwnerOnlyFileHandler(logging.handlers.WatchedFileHandler):
    # Watched so logrotate can move the file away; created 0600 because log lines carry user
    # names, addresses and devices even when every secret is redacted.
    def _open(self) -> TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


# --- configuration -------------------------------------------------------------------------------


def configure_logging(
    level: str = "INFO", *, log_file: Path | None = None, stream: TextIO | None = None
) -> None:
    global _configured  # noqa: PLW0603 -- process-wide, like logging itself
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    _ensure_structlog()

    handlers: list[logging.Handler] = [
        _StderrHandler() if stream is None else logging.StreamHandler(stream)
    ]
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handlers.append(_OwnerOnlyFileHandler(path, encoding="utf-8"))

    root = logging.getLogger()
    _remove_installed_handlers(root)
    formatter = build_formatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _installed_handlers.append(handler)
    root.setLevel(numeric)

    for name in _ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        for handler in list(routed.handlers):
            routed.removeHandler(handler)
        routed.propagate = True
        routed.disabled = False

    _install_record_factory()
    _configured = True


def _remove_installed_handlers(root: logging.Logger) -> None:
    while _installed_handlers:
        handler = _installed_handlers.pop()
        root.removeHandler(handler)
        handler.close()


def is_configured() -> bool:
    return _configured


def reset_logging() -> None:
    # Undoes configure_logging (for tests); levels and third-party loggers stay as they are.
    global _configured  # noqa: PLW0603 -- process-wide, like logging itself
    _remove_installed_handlers(logging.getLogger())
    if logging.getLogRecordFactory() is _redacting_record_factory:
        logging.setLogRecordFactory(_previous_record_factory)
    _configured = False
