"""One log stream: Threadline's structlog lines and every library's `logging` records
(python-telegram-bot, discord.py, slack-bolt, aioimaplib, uvicorn, …) rendered alike,
JSON in production (one object per line), readable lines in a terminal.

A traceback of an expected network failure (a refused connection, a timeout, a dropped
poll) is folded into one `error` field: such failures are retried, and a page of traceback
for each would bury what matters.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# Libraries that log every request at INFO; their warnings still come through.
_CHATTY = ("httpx", "httpcore", "hpack", "websockets", "asyncio", "aiosqlite", "urllib3")
_NETWORK_LIBRARIES = {"httpx", "httpcore", "aiohttp", "telegram", "discord", "slack_sdk",
                      "slack_bolt", "aioimaplib", "aiosmtplib", "websockets", "asyncpg",
                      "redis"}
_NETWORK_WORDS = ("Network", "Timeout", "TimedOut", "Connect", "Connection", "Disconnect",
                  "ClientError", "ServerError", "ProtocolError", "Abort", "Closed", "Shutdown")


def is_network_error(exc: BaseException) -> bool:
    """An expected failure to reach something: the exception or its cause (our own errors
    raised `from` one, like DatabaseUnavailableError)."""
    if isinstance(exc, (OSError, TimeoutError, EOFError)):  # ConnectionError is an OSError
        return True
    for cls in type(exc).__mro__:
        library = cls.__module__.split(".")[0]
        if library in _NETWORK_LIBRARIES and any(w in cls.__name__ for w in _NETWORK_WORDS):
            return True
    return exc.__cause__ is not None and is_network_error(exc.__cause__)


class Throttle:
    """At most one log line per failure class per `interval` seconds: an outage that fails
    every request is a few lines, not one (with a traceback) per request.

        if (suppressed := throttle.allow("ConnectionRefusedError")) is not None:
            log.warning("…", suppressed=suppressed)
    """

    def __init__(self, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._seen: dict[str, tuple[float, int]] = {}  # class -> (last logged, quiet since)

    def allow(self, key: str) -> int | None:
        """None to stay quiet; else log now, with how many went unlogged since last time."""
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]  # type: ignore[no-any-return]
    if exc_info is True:
        return sys.exc_info()[1]
    return None


def fold_network_tracebacks(logger: Any, method: str,
                            event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    exc = _exception(event.get("exc_info"))
    if exc is not None and is_network_error(exc):
        del event["exc_info"]
        event.setdefault("error", f"{type(exc).__name__}: {exc}" if str(exc)
                         else type(exc).__name__)
    return event


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it rather than adding a second one."""


class _Stderr:
    """Whatever sys.stderr is at the time of writing (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_LOGGED = "_threadline_logged"


def mark_logged(exc: BaseException) -> None:
    """Say that this error has been logged (with its request id), so that the server's own
    report of it is dropped (see _AlreadyLogged)."""
    try:
        setattr(exc, _LOGGED, True)
    except (AttributeError, TypeError):  # an exception type without attributes of its own
        pass


class _AlreadyLogged(logging.Filter):
    """Starlette raises an error again after its 500 has been sent, so that the server can
    log it; uvicorn then prints the traceback a second time, without the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, _LOGGED, False)


def configure_logging(fmt: str = "auto", level: str = "info", *, cache: bool = True) -> None:
    """`cache`: loggers keep their configuration from their first use (fast); tests that
    configure again pass False."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            fold_network_tracebacks,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=cache,
    )
    handler = _Handler(_Stderr())  # type: ignore[arg-type]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        # merge_contextvars: a library's record logged during a request or a turn carries
        # its request_id too.
        foreign_pre_chain=[structlog.contextvars.merge_contextvars,
                           structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           stamp, fold_network_tracebacks],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    server = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _AlreadyLogged) for f in server.filters):
        server.addFilter(_AlreadyLogged())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
