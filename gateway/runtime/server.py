"""`threadline serve`: the API, the web chat page, the scheduler and every configured channel
in one process; started and stopped in one lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from rich.console import Console

from config.settings import Settings
from gateway.api.app import create_app
from gateway.conversation.inbox import InboxWorker
from gateway.runtime.connections import fit_descriptors, guarded
from gateway.runtime.formations import Formation, load_formations
from gateway.runtime.leases import run_under
from gateway.runtime.live_bus import make_live_bus
from gateway.runtime.sqlite_lock import hold_sqlite
from gateway.runtime.supervisor import AdapterConfigError, Supervisor, load_adapter
from gateway.runtime.wiring import Runtime
from identity.storage import describe_url

log = structlog.get_logger("threadline.server")


@dataclass
class Gateway:
    runtime: Runtime
    formations: dict[str, Formation]
    supervisor: Supervisor
    refused: dict[str, str] = field(default_factory=dict)  # channel -> configuration error
    routes: list[Any] = field(default_factory=list)


def load_channels(runtime: Runtime) -> tuple[Supervisor, dict[str, str], list[Any]]:
    """Build every configured adapter; a misconfigured one is reported, not fatal."""
    supervisor = Supervisor(leases=runtime.leases)
    refused: dict[str, str] = {}
    routes: list[Any] = []
    for name, config in runtime.settings.channels.items():
        try:
            adapter = load_adapter(name, config, runtime.engine)
        except AdapterConfigError as exc:
            refused[name] = str(exc)
            log.error("channel not started: bad configuration", channel=name, error=str(exc))
            continue
        supervisor.add(adapter)
        # Reminders and inbox answers go out through any replica that can send on the
        # channel, not only the one holding its long poll.
        runtime.channels.add(adapter, is_up=functools.partial(supervisor.can_deliver, name))
        routes.extend(adapter.routes())
    return supervisor, refused, routes


def webchat_routes(runtime: Runtime, formation: Formation) -> list[Any]:
    try:
        from gateway.webchat import page as webchat
    except ImportError:  # the page is optional in stripped-down installs
        return []
    return webchat.routes(runtime, runtime.settings, formation)


async def build(settings: Settings) -> Gateway:
    runtime = await Runtime.open(settings)
    try:
        formations = load_formations(settings)
        supervisor, refused, routes = load_channels(runtime)
        runtime.channel_states = supervisor.states
        routes += webchat_routes(runtime, formations[settings.formation_id])
    except BaseException:
        await runtime.close()
        raise
    return Gateway(runtime, formations, supervisor, refused, routes)


def summary(gateway: Gateway, host: str, port: int, console: Console) -> None:
    settings = gateway.runtime.settings
    base = f"http://{host}:{port}"
    default = gateway.formations[settings.formation_id]
    console.print(f"[bold]Threadline[/bold] is up on {base}")
    console.print(f"  web chat   {base}/")
    console.print(f"  API        {base}/v1   (docs {base}/docs)")
    console.print(f"  store      {gateway.runtime.db.dialect}: {describe_url(settings.database)}")
    console.print(f"  cache      {describe_url(settings.cache)}")
    console.print(f"  responder  {settings.responder}")
    embedder = gateway.runtime.memory.users.embedder
    console.print("  recall     full-text" + (f" + meaning ({embedder.name})" if embedder else ""))
    channels = ", ".join(["api", "web", *gateway.supervisor.adapters]) or "none"
    console.print(f"  channels   {channels}")
    for name, problem in gateway.refused.items():
        console.print(f"  [red]channel {name} not started:[/red] {problem}")
    others = [f for f in gateway.formations if f != settings.formation_id]
    console.print(f"  formations {settings.formation_id} (default)"
                  + (", " + ", ".join(others) if others else ""))
    if default.generated:
        console.print("  [yellow]development keys (generated once, kept in "
                      f"{settings.data_dir}/dev-keys.json):[/yellow]")
        console.print(f"    X-Muxi-Admin-Key:  {default.admin_key}")
        console.print(f"    X-Muxi-Client-Key: {default.client_key}")
    elif settings.admin_key is None:
        console.print(f"  development keys: see {settings.data_dir}/dev-keys.json")
    console.print("Press Ctrl+C to stop.")


async def embed_missing(runtime: Runtime) -> None:
    """Give every memory stored without a vector of the configured model one, in the
    background: recall by words works meanwhile."""
    users = runtime.memory.users
    if users.embedder is None:
        return
    try:
        done = await users.embed_missing()
    except Exception:
        log.exception("embedding stored memories failed")
        return
    if done:
        log.info("embedded stored memories", count=done, model=users.embedder.name)


def server_config(app: Any, runtime: Runtime, host: str, port: int) -> uvicorn.Config:
    settings, metrics = runtime.settings, runtime.metrics
    protocol = guarded(settings.header_timeout, fit_descriptors(settings.max_connections),
                       on_timeout=metrics.header_timeouts.inc,
                       on_refused=metrics.connections_refused.inc)
    # log_config=None: uvicorn logs through the one log stream (see gateway.runtime.logs).
    return uvicorn.Config(app, host=host, port=port, http=protocol, log_level="warning",
                          log_config=None, timeout_graceful_shutdown=10, access_log=False)


async def serve(settings: Settings, host: str, port: int, console: Console, *,
                sockets: list[socket.socket] | None = None, quiet: bool = False) -> None:
    """Serve until SIGTERM. `sockets`: listen on these (already bound, shared by the
    workers of `serve --workers`); `quiet`: no start-up summary (all but the first)."""
    serving_lock = hold_sqlite(settings.database)  # noqa: F841  (held until the process ends)
    gateway = await build(settings)
    runtime = gateway.runtime

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        # Pages and event streams open on the other replicas hear this one's reminders.
        live_bus = make_live_bus(runtime.events, settings.cache, runtime.db)
        if live_bus is not None:
            await live_bus.start()
        gateway.supervisor.start()
        # One replica at a time runs the scheduler (its claims would keep two from firing
        # a task twice, but one poller is enough).
        scheduler = asyncio.create_task(
            run_under(runtime.leases, "scheduler", runtime.scheduler.run), name="scheduler")
        embedding = asyncio.create_task(embed_missing(runtime), name="embed-missing")
        # Every replica answers what a dead one acknowledged but never answered.
        inbox_worker = InboxWorker(runtime.engine, runtime.channels)
        inbox = asyncio.create_task(inbox_worker.run(), name="inbox")
        try:
            yield
        finally:
            embedding.cancel()
            inbox_worker.stop()
            log.info("shutting down: draining channels")
            await gateway.supervisor.stop()
            runtime.scheduler.stop()  # a running scheduler finishes its round; one on
            await asyncio.wait({scheduler}, timeout=15)  # standby has nothing to finish
            scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler
            await asyncio.wait({inbox}, timeout=15)
            inbox.cancel()
            if live_bus is not None:
                await live_bus.close()
            await runtime.close()
            log.info("stopped")

    app = create_app(runtime, gateway.formations, extra_routes=gateway.routes,
                     lifespan=lifespan)
    server = uvicorn.Server(server_config(app, runtime, host, port))
    runtime.metrics.open_connections = lambda: len(server.server_state.connections)
    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        if server.started and not quiet:
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            summary(gateway, host, bound, console)

    server.startup = startup  # type: ignore[method-assign]
    # uvicorn re-raises SIGTERM after its graceful stop, so the process would die by the
    # signal; handle it here instead and exit 0 once everything is drained.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    try:
        await server.serve(sockets=sockets)
    finally:
        if not server.started:
            await runtime.close()
