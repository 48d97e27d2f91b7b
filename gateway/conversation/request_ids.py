"""Request ids: one per HTTP request and per channel turn, on every log line of it.

The id lives in structlog's context variables, so every line logged while it is bound
carries `request_id` (library records too: see `gateway.runtime.logs`), and tasks started
meanwhile inherit it. An HTTP request binds one first (the caller's X-Request-ID when sane);
a channel turn that arrives without one binds its own."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

KEY = "request_id"
HEADER = "X-Request-ID"
# What a proxy or a client's tracing sends (UUIDs, hex, base64, "Root=1-…"): short, no
# spaces, no quotes, nothing a log line or a header would need to escape.
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:20]}"


def accepted(given: str | None) -> str:
    """`given` when it is a sane id, else a new one."""
    return given if given is not None and _SANE.fullmatch(given) else new_request_id()


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get(KEY)
    return value if isinstance(value, str) else None


@contextmanager
def bound_request_id(request_id: str | None = None) -> Iterator[str]:
    """Bind `request_id` (or keep the one bound already, or make one) for the block."""
    request_id = request_id or current_request_id() or new_request_id()
    tokens = structlog.contextvars.bind_contextvars(**{KEY: request_id})
    try:
        yield request_id
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
