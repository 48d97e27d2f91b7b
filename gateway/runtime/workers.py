"""`threadline serve --workers N`: N processes on one host sharing one port.

The parent binds one listening socket per worker on the same port (SO_REUSEPORT, so the
kernel spreads new connections across them evenly; one shared socket lets whichever worker
wakes first take a whole burst), forks the workers and waits. Each worker is a full replica
(its own pool, cache tier and leases), so this needs PostgreSQL: SQLite serves one process.
SIGTERM or SIGINT to the parent is passed to every worker, which drains and exits; a worker
that dies is started again (at most once every few seconds, so a crash loop stays visible).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import structlog
from rich.console import Console

from config.settings import ConfigError, Settings

log = structlog.get_logger("threadline.server")

RESTART_PAUSE = 2.0  # seconds between restarts of a worker that died


def _end_with_parent() -> None:
    """A worker whose parent is killed outright gets SIGTERM (Linux), instead of serving on
    as an orphan nobody supervises."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM still reaches it
        return
    if os.getppid() == 1:  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"could not listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_workers(settings: Settings, host: str, port: int, workers: int,
                  console: Console, run: Callable[..., object]) -> int:
    """Fork `workers` processes each running `run(settings, host, port, console,
    sockets=[sock], quiet=…)` (a coroutine function); returns the exit status."""
    if settings.database.startswith("sqlite:"):
        raise ConfigError(
            f"--workers {workers} needs PostgreSQL: SQLite serves one process "
            "(THREADLINE_DATABASE_URL=postgresql://…), or run without --workers")
    first = listening_socket(host, port)
    bound = first.getsockname()[1]  # port 0: the one the system chose, for every socket
    # One socket per worker, kept here too, so that a worker started again takes its own.
    socks = [first, *(listening_socket(host, bound) for _ in range(workers - 1))]
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def start(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling, its own event loop
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _end_with_parent()
            code = 0
            try:
                for other, sock in enumerate(socks):  # only its own: the kernel balances
                    if other != number:
                        sock.close()
                asyncio.run(run(settings, host, port, console,  # type: ignore[arg-type]
                                sockets=[socks[number]],
                                quiet=number > 0))
            except BaseException as exc:  # noqa: BLE001 - a worker says why it ended
                if not isinstance(exc, KeyboardInterrupt | SystemExit):
                    print(f"worker {number} failed: {type(exc).__name__}: {exc}",
                          file=sys.stderr, flush=True)
                    code = 1
            os._exit(code)
        children[pid] = number

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for number in range(workers):
        start(number)
    console.print(f"  workers    {workers} processes on {host}:{bound} "
                  f"(pids {', '.join(str(p) for p in children)})")
    status, last_restart = 0, 0.0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        number = children.pop(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if stopping:  # one still starting dies of the SIGTERM itself: that is a clean stop
            status = status or int(exit_code not in (0, -signal.SIGTERM))
            continue
        log.error("worker ended; starting it again", worker=number, pid=pid, exit=exit_code)
        # Its socket goes at once, so new connections go to the living workers meanwhile;
        # the worker started again gets a new one.
        socks[number].close()
        time.sleep(max(0.0, RESTART_PAUSE - (time.monotonic() - last_restart)))
        last_restart = time.monotonic()
        if not stopping:
            socks[number] = listening_socket(host, bound)
            start(number)
    for sock in socks:
        sock.close()
    return status
