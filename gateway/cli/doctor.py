"""`threadline doctor`: every check a deployment needs, each with how to fix it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rich.console import Console

from config.settings import ConfigError, Settings, load_settings
from gateway.runtime.logs import configure_logging
from identity.storage import Database, DatabaseError, connect, describe_url
from memory import SCHEMA

Check = tuple[str, bool, str]  # name, passed, detail (or how to fix)


async def _guard(name: str, work: Callable[[], Awaitable[str]], fix: str,
                 timeout: float = 15.0) -> Check:
    try:
        return name, True, await asyncio.wait_for(work(), timeout)
    except TimeoutError:
        return name, False, f"no answer within {timeout:.0f}s. {fix}"
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
        return name, False, f"{exc}. {fix}"


async def _database(settings: Settings, checks: list[Check]) -> Database | None:
    target = describe_url(settings.database)
    try:
        db = await connect(settings.database, schema=SCHEMA)
    except DatabaseError as exc:
        checks.append(("database", False, f"{exc}. Check THREADLINE_DATABASE_URL (or the "
                                          "formation file's memory.persistent) and that the "
                                          "server is running."))
        return None
    checks.append(("database", True, f"{db.dialect} at {target}"))

    pending = await db.pending_migrations()
    checks.append(("migrations", not pending,
                   "schema up to date" if not pending else
                   f"{len(pending)} pending; run: threadline migrate "
                   "(serve also applies them at start-up)"))
    return db


async def run_checks(console: Console) -> bool:
    checks: list[Check] = []
    try:
        settings = load_settings()
    except ConfigError as exc:
        checks.append(("configuration", False, str(exc)))
        _print(console, checks)
        return False
    configure_logging(settings.log_format, "error")
    source = str(settings.formation_file) if settings.formation_file else "environment only"
    checks.append(("configuration", True, f"{source}; formation {settings.formation_id}"))
    for name, read in (("identity secret", settings.identity_key),
                       ("credentials key", settings.credential_key)):
        try:
            read()
            checks.append((name, True, "set" if settings.env == "production"
                           else f"set (development: kept in {settings.data_dir})"))
        except ConfigError as exc:
            checks.append((name, False, str(exc)))
    try:
        from gateway.runtime.formations import load_formations

        formations = load_formations(settings)
        checks.append(("API keys", True, f"{len(formations)} formation(s)"))
    except ConfigError as exc:
        checks.append(("API keys", False, str(exc)))

    if settings.cache.startswith("redis"):
        async def ping() -> str:
            import redis.asyncio as redis

            client = redis.Redis.from_url(settings.cache, socket_connect_timeout=3)
            try:
                await client.ping()
            finally:
                await client.aclose()
            return describe_url(settings.cache)

        checks.append(await _guard("cache", ping, "Check THREADLINE_CACHE_URL and that Redis "
                                   "is running."))
    else:
        checks.append(("cache", True, "in-process (use redis:// when several processes share "
                                      "one database)"))

    db = await _database(settings, checks)
    if db is not None:
        await db.close()
    checks.extend(await _channels(settings, db is not None))
    _print(console, checks)
    return all(passed for _, passed, _ in checks)


async def _channels(settings: Settings, database_ok: bool) -> list[Check]:
    if not settings.channels:
        return [("channels", True, "none configured besides the API and web chat "
                                   "(add a channels: section to the formation file)")]
    if not database_ok:
        return [(f"channel {name}", False, "not checked: the database is unreachable")
                for name in settings.channels]
    from gateway.conversation.ports import AdapterConfigError
    from gateway.runtime.supervisor import load_adapter
    from gateway.runtime.wiring import Runtime

    results: list[Check] = []
    runtime = await Runtime.open(settings, migrate=False)
    try:
        for name, config in settings.channels.items():
            try:
                adapter = load_adapter(name, config, runtime.engine)
            except AdapterConfigError as exc:
                results.append((f"channel {name}", False, str(exc)))
                continue
            results.append(await _guard(f"channel {name}", adapter.check,
                                        f"Check the credentials in channels.{name}."))
    finally:
        await runtime.close()
    return results


def _print(console: Console, checks: list[Check]) -> None:
    for name, passed, detail in checks:
        mark = "[green]✓[/green]" if passed else "[red]✗[/red]"
        console.print(f"{mark} {name:<18} {detail}", highlight=False)
    failed = sum(not passed for _, passed, _ in checks)
    console.print("all checks passed" if not failed else f"{failed} problem(s) found")
