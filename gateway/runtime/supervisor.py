"""Channel adapters: the contract, the loader and the supervisor that keeps them running.

A channel is one module `adapters/<name>.py` with a function
`create(config: dict, engine: Engine) -> Adapter`, enabled by a `channels.<name>` section in
the formation file. The core never imports an adapter by name; it loads what is configured.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.conversation.messages import OutboundMessage

log = structlog.get_logger("threadline.channels")


class AdapterConfigError(Exception):
    """A channel's settings are missing or wrong; the message names the setting."""


class Adapter(Protocol):
    name: str

    async def run(self) -> None:
        """Serve the channel until cancelled; raising means it failed and is retried."""

    async def deliver(self, message: OutboundMessage) -> None:
        """Send a message to a conversation unprompted (reminders)."""

    async def check(self) -> str:
        """Verify credentials and reachability for `threadline doctor`; raise on a problem,
        return a one-line description (e.g. the bot's name) when fine."""

    def routes(self) -> list[Any]:
        """Starlette routes this channel serves inside the gateway (webhooks), if any."""


def load_adapter(name: str, config: Mapping[str, Any], engine: Any) -> Adapter:
    try:
        module = importlib.import_module(f"adapters.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"adapters.{name}":
            raise AdapterConfigError(
                f"no channel named {name!r} (no module adapters/{name}.py)"
            ) from None
        raise
    return module.create(dict(config), engine)


@dataclass
class ChannelState:
    name: str
    status: str = "starting"  # starting, running, retrying, stopped
    failures: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)


class Supervisor:
    """Runs each adapter in its own task; a failure is retried with capped exponential
    backoff and never touches the other channels or the API."""

    def __init__(self, *, base_delay: float = 1.0, max_delay: float = 60.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.adapters: dict[str, Adapter] = {}
        self.states: dict[str, ChannelState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, adapter: Adapter) -> None:
        self.adapters[adapter.name] = adapter
        self.states[adapter.name] = ChannelState(adapter.name)

    def start(self) -> None:
        for name, adapter in self.adapters.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._keep(adapter),
                                                        name=f"channel:{name}")

    async def _keep(self, adapter: Adapter) -> None:
        state = self.states[adapter.name]
        while True:
            state.status, state.since = "running", time.time()
            log.info("channel started", channel=adapter.name)
            started = time.monotonic()
            try:
                await adapter.run()
                raise RuntimeError("channel stopped by itself")
            except asyncio.CancelledError:
                state.status = "stopped"
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is retried
                if time.monotonic() - started > self.max_delay:
                    state.failures = 0  # it ran fine for a while: start backoff afresh
                state.failures += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self.max_delay, self.base_delay * 2 ** (state.failures - 1))
                delay *= random.uniform(0.8, 1.2)
                state.status = "retrying"
                log.warning("channel failed; retrying", channel=adapter.name,
                            error=state.last_error, retry_in=round(delay, 1),
                            failures=state.failures)
                await asyncio.sleep(delay)

    async def stop(self, timeout: float = 15.0) -> None:
        """Cancel every channel; each adapter drains its in-flight replies on cancellation."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._tasks.clear()
