"""`threadline users list|export|erase`: the operators' user lifecycle from a shell.
Registered on the `users` group by `gateway.cli.main`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.main import (
    FormationOption,
    _confirm,
    _formation,
    _parse_identifier,
    _run,
    _user_of,
    app,
    err,
    out,
    users,
)
from gateway.runtime.lifecycle import export_document
from gateway.runtime.wiring import Runtime
from identity.audit import AuditLog
from identity.directory import UserDirectory
from identity.types import InvalidIdentifierError
from memory.lifecycle import parse_iso


def _time(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise InvalidIdentifierError(f"{name}: not an ISO 8601 time ({text!r})",
                                     field=name) from None


@users.command("list")
def users_list(
    q: str = typer.Option(None, "--search", "-s",
                          help="Only users with an identifier starting with this."),
    kind: str = typer.Option(None, "--type", "-t",
                             help="Only users with an identifier of this type (email, slack, …)."),
    since: str = typer.Option(None, help="Created at or after (ISO 8601, e.g. 2026-11-01)."),
    until: str = typer.Option(None, help="Created before (ISO 8601)."),
    limit: int = typer.Option(50, min=1, max=500, help="Users per page."),
    cursor: str = typer.Option(None, help="Where the previous page ended (it prints it)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
    formation: str = FormationOption,
):
    """List and search users, oldest first, a page at a time."""

    async def work(rt: Runtime) -> None:
        page = await UserDirectory(rt.db).page(
            _formation(rt, formation), prefix=q, kind=kind, since=_time("since", since),
            until=_time("until", until), limit=limit, cursor=cursor)
        if as_json:
            out.print_json(data={"users": [
                {"user_id": u.user_id, "created_at": u.created_at.isoformat(),
                 "identifiers": [i.identifier for i in u.identifiers]} for u in page.users],
                "next_cursor": page.next_cursor})
            return
        table = Table()
        for column in ("user", "created", "identifiers"):
            table.add_column(column)
        for u in page.users:
            table.add_row(u.user_id, u.created_at.strftime("%Y-%m-%d %H:%M"),
                          ", ".join(i.identifier for i in u.identifiers) or "-")
        out.print(table)
        if page.next_cursor:
            out.print(f"more: --cursor {page.next_cursor}")

    _run(work)


@users.command("export")
def users_export(
    user_or_identifier: str = typer.Argument(..., help="usr_… or any of its identifiers."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="Write the JSON here instead of to standard output."),
    formation: str = FormationOption,
):
    """Everything kept about one user as one JSON document (for a data access request)."""

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        document = await export_document(rt, fid, await _user_of(rt, fid, user_or_identifier),
                                         actor="cli")
        text = json.dumps(document, indent=2, ensure_ascii=False)
        if output is None:
            sys.stdout.write(text + "\n")
        else:
            output.write_text(text + "\n", encoding="utf-8")
            err.print(f"wrote {output} ({len(document['identifiers'])} identifiers, "
                      f"{len(document['memories'])} memories, "
                      f"{len(document['sessions'])} sessions)")

    _run(work)


@users.command("erase")
def users_erase(
    user_or_identifier: str = typer.Argument(..., help="usr_… or any of its identifiers."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    formation: str = FormationOption,
):
    """Erase one user everywhere: identifiers, memory, sessions, tasks, credentials.
    Cannot be undone; export first if the data must be handed over."""

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        user_id = await _user_of(rt, fid, user_or_identifier)
        identifiers = await rt.identity.identifiers_of(fid, user_id)
        out.print(f"{user_id}: {', '.join(i.identifier for i in identifiers) or 'no identifiers'}")
        await _confirm("Erase this user and everything kept about them? This cannot be "
                       "undone", yes)
        erased = await rt.identity.erase(fid, user_id, actor="cli")
        removed = ", ".join(f"{kind.replace('_', ' ')}: {n}" for kind, n in erased.counts.items()
                            if n)
        out.print(f"erased {user_id}: {removed or 'nothing else kept'}")

    _run(work)


@app.command("audit")
def audit_log(
    user: str = typer.Option(None, "--user", "-u", help="Records about this user (usr_…)."),
    identifier: str = typer.Option(None, "--identifier", "-i",
                                   help="Records about this identifier."),
    since: str = typer.Option(None, help="At or after (ISO 8601)."),
    until: str = typer.Option(None, help="Before (ISO 8601)."),
    limit: int = typer.Option(50, min=1, max=10_000, help="Records to show, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
    formation: str = FormationOption,
):
    """Who linked, unlinked, merged, exported or erased whom, and when (newest first)."""

    async def work(rt: Runtime) -> None:
        fid = _formation(rt, formation)
        key = rt.identity.parse(_parse_identifier(identifier)).key if identifier else None
        start, end = _time("since", since), _time("until", until)
        entries = await AuditLog(rt.db).entries(
            fid, user_id=user, identifier_key=key, limit=limit,
            since=start.timestamp() if start else None, until=end.timestamp() if end else None)
        if as_json:
            out.print_json(data=[{
                "at": datetime.fromtimestamp(e.at, UTC).isoformat(), "actor": e.actor,
                "action": e.action, "user_id": e.user_id, "identifier": e.identifier,
                "before": e.before, "after": e.after} for e in entries])
            return
        table = Table()
        for column in ("at (UTC)", "actor", "action", "user", "identifier"):
            table.add_column(column)
        for e in entries:
            table.add_row(datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                          e.actor, e.action, e.user_id or "-", e.identifier or "-")
        out.print(table)

    _run(work)
