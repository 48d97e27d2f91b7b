"""Guards below the ASGI app: a deadline for each request's headers, and a cap on open
connections, so that slow or idle clients cannot hold every socket and file descriptor.

uvicorn has neither. Its `timeout_keep_alive` covers the wait between requests and is
reset by every byte received, so a client that sends its headers a byte at a time keeps
its socket for ever; `limit_concurrency` answers 503 only once a request's headers are in.
Both guards therefore live in a subclass of uvicorn's httptools protocol, the one place
that sees a connection before there is a request (as hyper's `header_read_timeout` and
Go's `ReadHeaderTimeout` do)."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.runtime.logs import Throttle

log = structlog.get_logger("threadline.http")


def _answer(status: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}", "connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_TIMED_OUT = _answer("408 Request Timeout", "the request headers did not arrive in time\n")
_BUSY = _answer("503 Service Unavailable", "too many open connections; retry soon\n",
                "retry-after: 1")

# Descriptors kept for everything but client sockets: the database pool, the channels'
# connections, log files, the listening socket.
DESCRIPTOR_MARGIN = 256


def _nothing() -> None:
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """Set by `guarded()`: the header deadline in seconds, the connection cap, and what to
    call when either closes a connection (metrics)."""

    header_timeout: float = 10.0
    max_connections: int = 1000
    on_timeout: Callable[[], None] = staticmethod(_nothing)
    on_refused: Callable[[], None] = staticmethod(_nothing)
    throttle = Throttle(interval=10.0)

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        if full:
            self.on_refused()
            if (suppressed := self.throttle.allow("refused")) is not None:
                log.warning("connection refused: THREADLINE_MAX_CONNECTIONS are open",
                            max_connections=self.max_connections, suppressed=suppressed)
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()  # from connecting: the first request's headers have this long

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a later request on a kept-alive connection: from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.on_timeout()
        if (suppressed := self.throttle.allow("timeout")) is not None:
            log.info("slow client closed: no complete request headers within "
                     "THREADLINE_HEADER_TIMEOUT", header_timeout=self.header_timeout,
                     suppressed=suppressed)
        if self.cycle is None or self.cycle.response_complete:  # never inside a response
            self.transport.write(_TIMED_OUT)
        self.transport.close()


def guarded(header_timeout: float, max_connections: int, *,
            on_timeout: Callable[[], None] = _nothing,
            on_refused: Callable[[], None] = _nothing) -> type[GuardedHttpProtocol]:
    """uvicorn's `http=` protocol class with these limits (each server its own class)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {
        "header_timeout": header_timeout, "max_connections": max_connections,
        "on_timeout": staticmethod(on_timeout), "on_refused": staticmethod(on_refused),
        "throttle": Throttle(interval=10.0)})


def fit_descriptors(max_connections: int) -> int:
    """Raise the open-file limit to what `max_connections` needs (up to the hard limit);
    if even that is too low, fewer connections, so accepting never fails for lack of a
    descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + DESCRIPTOR_MARGIN
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - DESCRIPTOR_MARGIN)
        log.warning("THREADLINE_MAX_CONNECTIONS lowered to fit the open-file limit",
                    max_connections=fitted, configured=max_connections, open_file_limit=soft)
        return fitted
    return max_connections
