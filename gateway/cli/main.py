"""The `threadline` command."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from config.settings import ConfigError, Settings, load_settings
from gateway.runtime.logs import configure_logging
from gateway.runtime.wiring import Runtime
from identity import (
    DatabaseError,
    IdentifierConflictError,
    IdentityError,
    MergeRecord,
    UserNotFoundError,
)
from identity.storage import connect, describe_url
from memory import SCHEMA
from memory.merges import PART, summary

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


async def _user_of(rt: Runtime, fid: str, given: str) -> str:
    """A user as named on a command line: its usr_… id, or any of its identifiers."""
    if given.startswith("usr_") and await rt.identity.store.user_exists(fid, given):
        return given
    found = await rt.identity.resolve(fid, _parse_identifier(given), create=False)
    if found is None:
        if given.startswith("usr_"):
            raise UserNotFoundError(given)
        raise IdentityError(f"no user has identifier {given}")
    return found


async def _confirm(question: str, yes: bool) -> None:
    """Go on only when the person at the terminal says so (or --yes said it already)."""
    if yes:
        return
    if not sys.stdin.isatty():
        err.print("[red]error:[/red] no terminal to ask for confirmation; nothing changed "
                  "(pass --yes to go ahead without asking)", highlight=False)
        raise typer.Exit(1)
    try:
        agreed = await asyncio.to_thread(typer.confirm, question, default=False)
    except typer.Abort:
        agreed = False
    if not agreed:
        err.print("nothing changed")
        raise typer.Exit(1)


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _show_moves(record: MergeRecord, keep_label: str) -> None:
    """What a merge moves (or moved), as lines for a person."""
    _say(f"  identifiers: {len(record.identifiers)}")
    for i in record.identifiers:
        _say(f"    {i.identifier} ({i.type or 'untyped'})")
    if record.parts is None:
        return
    moves = summary(record.parts.get(PART))
    counts = [f"{kind.replace('_', ' ')} {n}" for kind, n in moves["counts"].items() if n]
    _say(f"  memory: {', '.join(counts) or 'nothing'}")
    if moves["fact_collisions"]:
        _say(f"  facts both have ({keep_label}'s value wins):")
        for c in moves["fact_collisions"]:
            _say(f"    {c['key']}: {c['kept_value']!r} stays, {c['merged_value']!r} is dropped")


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
        user_id = await _user_of(rt, fid, user_or_identifier)
        table = Table(title=user_id)
        for column in ("identifier", "type", "linked at"):
            table.add_column(column)
        for item in await rt.identity.identifiers_of(fid, user_id):
            table.add_row(item.identifier, item.type or "-", item.created_at.isoformat())
        out.print(table)

    _run(work)


YesOption = typer.Option(False, "--yes", "-y",
                         help="Do it without asking (needed when no terminal is attached).")
# Help texts: typer keeps the line breaks of every paragraph but the first, so each
# paragraph here is one line.
_MERGE_HELP = (
    "Fold one user into another: identifiers, memory, sessions, credentials, tasks.\n\n"
    "Prints a preview first (what moves, and the facts both users have: KEEP's value "
    "wins), then asks; --yes skips asking, --dry-run only previews.\n\n"
    "The merge is journaled: `threadline users undo-merge MERGE_ID` puts both users back "
    "as they were, within the retention window (THREADLINE_MERGE_RETENTION_DAYS, 30 days "
    "by default)."
)
_UNDO_MERGE_HELP = (
    "Undo a merge: the merged-away user comes back with its identifiers and memory.\n\n"
    "Both users are as they were before the merge, the same ids included; what the kept "
    "user gained since the merge stays with it. Possible within the retention window "
    "(THREADLINE_MERGE_RETENTION_DAYS, 30 days by default). Refused once undone, when the "
    "kept user has been merged away since (undo that merge first), or when a moved "
    "identifier has been unlinked or linked elsewhere since.\n\n"
    "Shows what goes back, then asks; --yes skips asking."
)


@users.command("merge", help=_MERGE_HELP)
def users_merge(
    keep: str = typer.Argument(
        ..., metavar="KEEP", help="The user that stays: its usr_… id or any identifier of it."),
    absorb: str = typer.Argument(
        ..., metavar="FROM",
        help="The user folded into KEEP, then deleted: its usr_… id or any identifier of it."),
    yes: bool = YesOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the preview."),
    formation: str = FormationOption,
):

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        kept, merged = await _user_of(rt, fid, keep), await _user_of(rt, fid, absorb)
        preview = await rt.identity.merge(fid, kept, merged, actor="cli", dry_run=True)
        _say(f"Preview: merge {merged} into {kept} ({merged} is then deleted)")
        _show_moves(preview, kept)
        if dry_run:
            return
        await _confirm(f"Merge {merged} into {kept}?", yes)
        record = await rt.identity.merge(fid, kept, merged, actor="cli")
        _say(f"merged {merged} into {kept}; moved {len(record.identifiers)} identifier(s); "
             f"merge id {record.id}")
        _say(f"to undo it (until {_when(record.expires_at)}): threadline users undo-merge "
             f"{record.id}" + (f" -f {fid}" if formation else ""))

    _run(work)


@users.command("undo-merge", help=_UNDO_MERGE_HELP)
def users_undo_merge(
    merge_id: str = typer.Argument(
        ..., metavar="MERGE_ID",
        help="The merge id (mrg_…) that `users merge` printed (also in the audit log)."),
    yes: bool = YesOption,
    formation: str = FormationOption,
):

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        check = await rt.identity.undo_merge(fid, merge_id, actor="cli", dry_run=True)
        _say(f"Undo merge {merge_id} of {_when(check.at)}: {check.merged_user} comes back "
             f"from {check.kept_user} with")
        _show_moves(check, "the kept user")
        await _confirm(f"Undo merge {merge_id}?", yes)
        record = await rt.identity.undo_merge(fid, merge_id, actor="cli")
        shown = ", ".join(i.identifier for i in record.identifiers) or "no identifiers"
        _say(f"undone: {record.merged_user} is back with {shown}")

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
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64, help=(
        "Processes sharing the port, each a full replica (needs PostgreSQL).")),
):
    """Run the gateway: HTTP API, web chat page, scheduler and every configured channel."""
    from gateway.runtime.server import serve as run_server

    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        _fast_event_loop()
        if workers > 1:
            from gateway.runtime.workers import serve_workers

            raise typer.Exit(serve_workers(settings, host or settings.host,
                                           settings.port if port is None else port, workers,
                                           err, run_server))
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
