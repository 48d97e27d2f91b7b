"""The channel loader and the supervisor that keeps every channel running.

A channel is one module `adapters/<name>.py` (see `gateway.conversation.ports`), enabled by a
`channels.<name>` section in the formation file. The core never imports an adapter by name;
it loads what is configured.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import structlog

from gateway.conversation.engine import describe
from gateway.conversation.ports import Adapter, AdapterConfigError, Conversations, Ready
from gateway.runtime.leases import Leases, LocalLeases, run_under
from gateway.runtime.shards import ShardedAdapter, ShardedState, run_shards
from memory.lifecycle import iso

__all__ = ["AdapterConfigError", "ChannelState", "ShardedState", "Supervisor", "load_adapter"]

log = structlog.get_logger("threadline.channels")


def load_adapter(name: str, config: Mapping[str, Any], conversations: Conversations) -> Adapter:
    try:
        module = importlib.import_module(f"adapters.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"adapters.{name}":
            raise AdapterConfigError(
                f"no channel named {name!r} (no module adapters/{name}.py)"
            ) from None
        raise
    adapter: Adapter = module.create(dict(config), conversations)
    return adapter


@dataclass
class ChannelState:
    """`starting`, `up` (connected), `retrying` (after `last_error`), `standby` (another
    replica runs it; this one takes over if that one goes), or `stopped` (with
    `last_error` saying why: bad credentials or settings are not retried)."""

    name: str
    status: str = "starting"
    detail: str = ""
    failures: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)

    def set(self, status: str, detail: str = "") -> None:
        self.status, self.detail, self.since = status, detail, time.time()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "since": iso(self.since)}
        if self.detail:
            out["detail"] = self.detail
        if self.last_error:
            out["last_error"] = self.last_error
        if self.failures:
            out["failures"] = self.failures
        return out


def _shards(adapter: Adapter) -> int:
    """How many shards an exclusive adapter is cut into (`shards`, 1 when it says nothing)."""
    return int(getattr(adapter, "shards", 1)) if adapter.exclusive else 1


class Supervisor:
    """Runs each adapter in its own task. A network failure is retried with capped
    exponential backoff; refused credentials stop the channel with a report. Neither
    touches the other channels or the API."""

    def __init__(self, *, base_delay: float = 1.0, max_delay: float = 60.0,
                 leases: Leases | None = None) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.leases: Leases = leases or LocalLeases()
        self.adapters: dict[str, Adapter] = {}
        self.states: dict[str, ChannelState | ShardedState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, adapter: Adapter) -> None:
        self.adapters[adapter.name] = adapter
        count = _shards(adapter)
        self.states[adapter.name] = (ShardedState(adapter.name, count) if count > 1
                                     else ChannelState(adapter.name))

    def is_up(self, name: str) -> bool:
        state = self.states.get(name)
        return state is not None and state.status == "up"

    def can_deliver(self, name: str) -> bool:
        """Whether this replica can say something on the channel now: it runs it, or it
        stands by while another replica runs it and the adapter says it delivers from any
        replica (`delivers_on_standby`: Telegram's Bot API and SMTP need no long poll or
        mailbox of their own; a Discord gateway connection does)."""
        state = self.states.get(name)
        if state is None:
            return False
        if state.status == "standby":
            return bool(getattr(self.adapters[name], "delivers_on_standby", False))
        return state.status == "up"

    def start(self) -> None:
        for name, adapter in self.adapters.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._keep(adapter),
                                                        name=f"channel:{name}")

    async def _keep(self, adapter: Adapter) -> None:
        state = self.states[adapter.name]
        if isinstance(state, ShardedState):
            await self._keep_shards(adapter, state)
            return
        if not adapter.exclusive:
            await self._keep_running(adapter.name, state, adapter.run)
            return

        def standby() -> None:
            state.set("standby", "waiting for the lease: another replica runs this channel")

        await run_under(self.leases, f"channel:{adapter.name}",
                        lambda: self._keep_running(adapter.name, state, adapter.run),
                        standby=standby)

    async def _keep_shards(self, adapter: Adapter, state: ShardedState) -> None:
        """Each shard under a lease of its own, spread across the replicas."""
        sharded = cast(ShardedAdapter, adapter)

        async def keep(shard: int) -> None:
            mine = state.shards[shard] = ChannelState(f"{adapter.name} shard {shard}")
            try:
                await self._keep_running(adapter.name, mine,
                                         lambda ready: sharded.run_shard(shard, ready),
                                         shard=shard)
                state.stopped = mine  # bad credentials or settings: every shard stops
            finally:
                del state.shards[shard]

        try:
            await run_shards(self.leases, f"channel:{adapter.name}", state.count, keep,
                             seen=state.see)
        except asyncio.CancelledError:
            state.stopped = ChannelState(adapter.name, "stopped", "shut down")
            raise

    async def _keep_running(self, name: str, state: ChannelState,
                            run: Callable[[Ready], Awaitable[None]], *,
                            shard: int | None = None) -> None:
        where = {"channel": name} if shard is None else {"channel": name, "shard": shard}

        def ready(detail: str) -> None:
            state.set("up", detail)
            log.info("channel up", **where, detail=detail or None)

        while True:
            state.set("starting")
            started = time.monotonic()
            try:
                await run(ready)
                raise RuntimeError("channel stopped by itself")
            except asyncio.CancelledError:
                state.set("stopped", "shut down")
                raise
            except AdapterConfigError as exc:
                state.last_error = str(exc)
                state.set("stopped", "bad credentials or settings")
                log.error("channel stopped: bad credentials or settings",
                          **where, error=str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - any other failure is retried
                if time.monotonic() - started > self.max_delay:
                    state.failures = 0  # it ran fine for a while: start backoff afresh
                state.failures += 1
                state.last_error = describe(exc)
                delay = min(self.max_delay, self.base_delay * 2 ** (state.failures - 1))
                delay *= random.uniform(0.8, 1.2)
                state.set("retrying")
                log.warning("channel failed; retrying", **where,
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
