"""The `threadline` command."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from config.settings import ConfigError, Settings, load_settings
from gateway.runtime.logs import configure_logging
from gateway.runtime.wiring import Runtime
from identity import DatabaseError, IdentifierConflictError, IdentityError
from identity.storage import connect, describe_url
from memory import SCHEMA

app = typer.Typer(
    help="Threadline: one assistant on every channel, one user behind every identifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
users = typer.Typer(help="Look up, link, list, export and erase users.", no_args_is_help=True)
app.add_typer(users, name="users")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

FormationOption = typer.Option(None, "--formation", "-f", help="Formation id (default: settings).")


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_format, "warning" if settings.log_level == "info"
                      else settings.log_level)
    return settings


def _run(work: Callable[[Runtime], Awaitable[T]], *, migrate: bool = True) -> T:
    """Run one command against an open runtime; known errors become one line and exit 1."""

    async def main() -> T:
        runtime = await Runtime.open(_settings(), migrate=migrate)
        try:
            return await work(runtime)
        finally:
            await runtime.close()

    try:
        return asyncio.run(main())
    except (ConfigError, DatabaseError, IdentityError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _formation(rt: Runtime, given: str | None) -> str:
    """The formation a command works in: the default, or one this gateway serves."""
    from gateway.runtime.formations import load_formations

    if given is None:
        return rt.settings.formation_id
    served = load_formations(rt.settings)
    if given not in served:
        raise ConfigError(f"no formation {given!r} here; this gateway serves "
                          f"{', '.join(sorted(served))} (formations: in the formation file)")
    return given


def _parse_identifier(text: str) -> Any:
    """An identifier as typed on a command line, in the one text form the identity core
    reads (`alice@acme.com`, `tg_789`, `slack:U98765ABC`; `U98765ABC:slack` still works)."""
    return text


@app.command()
def migrate(check: bool = typer.Option(False, "--check", help="Only list pending migrations.")):
    """Create or upgrade the database schema (also done at every start-up)."""

    async def main() -> None:
        settings = _settings()
        db = await connect(settings.database, schema=SCHEMA)
        try:
            pending = await db.pending_migrations()
            if check or not pending:
                for m in pending:
                    out.print(f"pending  {m.component} {m.version:04d} {m.name}")
                out.print(f"{describe_url(settings.database)}: "
                          f"{len(pending) or 'no'} pending migration(s)")
                if check and pending:
                    raise typer.Exit(1)
                return
            for m in await db.migrate():
                out.print(f"applied  {m.component} {m.version:04d} {m.name}")
            out.print(f"{describe_url(settings.database)}: up to date")
        finally:
            await db.close()

    try:
        asyncio.run(main())
    except (ConfigError, DatabaseError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@users.command("resolve")
def users_resolve(
    identifier: str = typer.Argument(..., help="An identifier, optionally value:type."),
    create: bool = typer.Option(False, "--create", help="Create the user if it is unknown."),
    formation: str = FormationOption,
):
    """Print the user id (usr_…) behind an identifier."""

    async def work(rt: Runtime) -> None:
        user_id = await rt.identity.resolve(_formation(rt, formation),
                                            _parse_identifier(identifier), create=create)
        if user_id is None:
            err.print(f"no user has identifier {identifier} (use --create to make one)")
            raise typer.Exit(1)
        out.print(user_id)

    _run(work)


@users.command("link")
def users_link(
    identifiers: list[str] = typer.Argument(
        ..., help="Identifiers: alice@acme.com, tg_789, slack:U98765ABC, internal:user_123."),
    user: str = typer.Option(None, "--user", "-u",
                             help="Link to this user; default: the owner of one of them, or new."),
    formation: str = FormationOption,
):
    """Link identifiers to one user, all or nothing."""

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        try:
            result = await rt.identity.associate(fid, [_parse_identifier(i) for i in identifiers],
                                                 user, actor="cli")
        except IdentifierConflictError as exc:
            raise IdentityError(
                f"{exc}. Both are users already; to make them one person (identifiers and "
                f"memory together), run: threadline users merge {exc.requested_id} "
                f"{exc.owner_id}" + (f" -f {fid}" if formation else "")) from None
        out.print(f"{result.user_id}{' (new user)' if result.created_user else ''}")
        for ident in result.linked:
            out.print(f"  linked   {ident.display} ({ident.type or 'untyped'})")
        for ident in result.existing:
            out.print(f"  already  {ident.display} ({ident.type or 'untyped'})")

    _run(work)


@users.command("unlink")
def users_unlink(identifier: str, formation: str = FormationOption):
    """Remove an identifier from its user (the user and its memory stay)."""

    async def work(rt: Runtime) -> None:
        owner = await rt.identity.unlink(_formation(rt, formation),
                                         _parse_identifier(identifier), actor="cli")
        out.print(f"unlinked {identifier} from {owner}")

    _run(work)


@users.command("show")
def users_show(user_or_identifier: str, formation: str = FormationOption):
    """List a user's identifiers; give a usr_… id or any of its identifiers."""

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        user_id = user_or_identifier
        if not user_id.startswith("usr_"):
            found = await rt.identity.resolve(fid, _parse_identifier(user_id), create=False)
            if found is None:
                err.print(f"no user has identifier {user_or_identifier}")
                raise typer.Exit(1)
            user_id = found
        table = Table(title=user_id)
        for column in ("identifier", "type", "linked at"):
            table.add_column(column)
        for item in await rt.identity.identifiers_of(fid, user_id):
            table.add_row(item.identifier, item.type or "-", item.created_at.isoformat())
        out.print(table)

    _run(work)


@users.command("merge")
def users_merge(keep: str = typer.Argument(..., help="The user that stays (usr_…)."),
                absorb: str = typer.Argument(..., help="The user folded into it (usr_…)."),
                formation: str = FormationOption):
    """Fold one user into another: identifiers, memory, sessions, credentials, tasks."""

    async def work(rt: Runtime) -> None:
        moved = await rt.identity.merge(_formation(rt, formation), keep, absorb, actor="cli")
        out.print(f"merged {absorb} into {keep}; moved {len(moved)} identifier(s)")

    _run(work)


def _fast_event_loop() -> None:
    """uvloop when installed: uvicorn's own choice never applies, since we run its server
    inside our asyncio.run."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@app.command()
def serve(
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", "-p", help="Port to listen on (default 8000)."),
):
    """Run the gateway: HTTP API, web chat page, scheduler and every configured channel."""
    from gateway.runtime.server import serve as run_server

    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        _fast_event_loop()
        asyncio.run(run_server(settings, host or settings.host,
                               settings.port if port is None else port, err))
    except (ConfigError, DatabaseError, IdentityError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        if exc.code:
            err.print(f"[red]error:[/red] could not listen on {host or settings.host}:"
                      f"{settings.port if port is None else port} (in use, or not allowed)")
            raise typer.Exit(1) from None


@app.command()
def chat(
    identifier: str = typer.Argument(..., help="Who you are, e.g. user_123 or U98765ABC:slack."),
    channel: str = typer.Option("cli", "--channel", "-c", help="Channel name for the session."),
    formation: str = FormationOption,
):
    """Talk to the assistant in the terminal as an identifier (Ctrl+D to quit).

    Reminders set here arrive here while the chat runs (else on your latest channel)."""
    from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply

    conversation = f"cli-{os.getpid()}"

    class Terminal:
        """This terminal as a channel, so the assistant can speak unprompted."""

        name = channel

        def can_reach(self, user_id: str, where: str) -> bool:
            return where == conversation

        async def deliver(self, message: OutboundMessage) -> None:
            out.print(f"\n[bold]threadline>[/bold] {message.text}", highlight=False)

    async def say(reply: Reply) -> None:
        out.print(f"[bold]threadline>[/bold] {reply.text}", highlight=False)

    async def work(rt: Runtime) -> None:
        rt.channels.add(Terminal())
        scheduler = asyncio.create_task(rt.scheduler.run())
        out.print(f"Talking as {identifier} on '{channel}'. Ctrl+D to quit.")
        try:
            while True:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    out.print()
                    return
                if text.strip():
                    await rt.engine.handle(InboundMessage(
                        channel=channel, identifier=_parse_identifier(identifier),
                        conversation=conversation, text=text, formation=_formation(rt, formation),
                        message_id=f"{conversation}:{uuid.uuid4().hex}"), say)
        finally:
            rt.scheduler.stop()
            await scheduler

    _run(work)


@app.command()
def doctor():
    """Check configuration, database, migrations and each channel; say how to fix problems."""
    from gateway.cli.doctor import run_checks

    ok = asyncio.run(run_checks(out))
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


from gateway.cli import lifecycle as _lifecycle  # noqa: E402,F401  (users list/export/erase)
