"""Scheduled tasks: persisted, claimed atomically, fired once.

A claim moves a due task to `running` in one statement (PostgreSQL skips rows another
process holds), so two gateways on one database never both fire it. A claim whose process
died is taken over after the lease expires.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from identity.storage import Database
from memory.types import InvalidScheduleError, NotFoundError, Task, TaskStateError, new_id, now

LEASE_SECONDS = 300.0
_COLUMNS = ("id, user_id, formation_id, kind, schedule, message, next_run, status, last_run,"
            " created_at, channel, conversation, attempts, last_error, delivered_via, title")
_EVERY = re.compile(r"^every\s+(\d+)\s*(second|minute|hour|day)s?$", re.I)
_IN = re.compile(r"^in\s+(\d+)\s*(second|minute|hour|day)s?$", re.I)
_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _task(row: Any) -> Task:
    return Task(*row)


def next_run(kind: str, schedule: str, after: float) -> float:
    """When a task with this schedule fires next, after `after`; raises on a bad schedule."""
    schedule = schedule.strip()
    if kind in ("one_time", "notice"):  # a notice: said once, now, with no reminder mark
        if match := _IN.match(schedule):
            return after + int(match.group(1)) * _UNIT[match.group(2).lower()]
        try:
            when = datetime.fromisoformat(schedule.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidScheduleError(
                f"a one_time schedule is an ISO 8601 time or 'in N minutes', got {schedule!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when.timestamp() < after - 60:
            raise InvalidScheduleError(f"schedule {schedule!r} is in the past")
        return when.timestamp()
    if kind == "recurring":
        if match := _EVERY.match(schedule):
            seconds = int(match.group(1)) * _UNIT[match.group(2).lower()]
            if seconds < 60:
                raise InvalidScheduleError("a recurring task runs at most once a minute")
            return after + seconds
        if not croniter.is_valid(schedule) or len(schedule.split()) != 5:
            raise InvalidScheduleError(
                f"a recurring schedule is a 5-field cron expression or 'every N minutes', "
                f"got {schedule!r}"
            )
        base = datetime.fromtimestamp(after, UTC)
        return croniter(schedule, base).get_next(datetime).timestamp()
    raise InvalidScheduleError(f"task type must be one_time or recurring, got {kind!r}")


class Tasks:
    def __init__(self, db: Database) -> None:
        self.db = db

    def plan(self, user_id: str, formation: str, kind: str, schedule: str, message: str, *,
             channel: str | None = None, conversation: str | None = None) -> Task:
        """A valid task, not stored yet; raises InvalidScheduleError naming the problem."""
        if not message.strip():
            raise InvalidScheduleError("a task needs a message")
        created = now()
        return Task(new_id("job"), user_id, formation, kind, schedule.strip(), message.strip(),
                    next_run(kind, schedule, created), "scheduled", None, created, channel,
                    conversation)

    async def insert(self, task: Task, *, q: Any = None) -> Task:
        await (q or self.db).execute(
            f"INSERT INTO scheduled_tasks ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
            " $9, $10, $11, $12, $13, $14, $15, $16)",
            task.id, task.user_id, task.formation_id, task.kind, task.schedule, task.message,
            task.next_run, task.status, task.last_run, task.created_at, task.channel,
            task.conversation, task.attempts, task.last_error, task.delivered_via, task.title,
        )
        return task

    async def add(self, user_id: str, formation: str, kind: str, schedule: str, message: str, *,
                  channel: str | None = None, conversation: str | None = None) -> Task:
        return await self.insert(self.plan(user_id, formation, kind, schedule, message,
                                           channel=channel, conversation=conversation))

    async def list(self, user_id: str, *, include_done: bool = False) -> builtins.list[Task]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM scheduled_tasks WHERE user_id = $1 ORDER BY next_run",
            user_id,
        )
        tasks = [_task(r) for r in rows]
        return tasks if include_done else [t for t in tasks if t.status in (
            "scheduled", "paused", "running", "failed")]

    async def get(self, user_id: str, task_id: str) -> Task:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM scheduled_tasks WHERE user_id = $1 AND id = $2",
            user_id, task_id,
        )
        if row is None:
            raise NotFoundError("scheduled job", task_id)
        return _task(row)

    async def cancel(self, user_id: str, task_id: str) -> None:
        async with self.db.transaction() as tx:
            found = await tx.fetchval(
                "UPDATE scheduled_tasks SET status = 'cancelled', next_run = NULL"
                " WHERE user_id = $1 AND id = $2 AND status IN ('scheduled', 'paused', 'running')"
                " RETURNING id",
                user_id, task_id,
            )
        if found is None:
            raise NotFoundError("scheduled job", task_id)

    async def in_formation(self, formation: str, task_id: str, *, q: Any = None) -> Task:
        """A task of any user of `formation` (the admin API's view), locked for update
        when read inside a PostgreSQL transaction `q`."""
        lock = " FOR UPDATE" if q is not None and self.db.dialect == "postgres" else ""
        row = await (q or self.db).fetchrow(
            f"SELECT {_COLUMNS} FROM scheduled_tasks WHERE id = $1 AND formation_id = $2{lock}",
            task_id, formation,
        )
        if row is None:
            raise NotFoundError("scheduled job", task_id)
        return _task(row)

    async def pause(self, formation: str, task_id: str) -> Task:
        """Stop a scheduled task from firing; it keeps its next run for `resume`. Pausing a
        paused task changes nothing. A task firing right now, or finished, is refused."""
        async with self.db.transaction() as tx:
            task = await self.in_formation(formation, task_id, q=tx)
            if task.status == "paused":
                return task
            if task.status != "scheduled":
                raise TaskStateError(task_id, task.status, "paused")
            await tx.execute("UPDATE scheduled_tasks SET status = 'paused' WHERE id = $1",
                             task_id)
        return dataclasses.replace(task, status="paused")

    async def resume(self, formation: str, task_id: str, *, at: float | None = None) -> Task:
        """Let a paused task fire again at its next due time: a recurring one skips the runs
        it missed while paused; a one-time one whose time passed fires at once (late rather
        than never)."""
        at = now() if at is None else at
        async with self.db.transaction() as tx:
            task = await self.in_formation(formation, task_id, q=tx)
            if task.status == "scheduled":
                return task
            if task.status != "paused":
                raise TaskStateError(task_id, task.status, "resumed")
            upcoming = task.next_run if task.next_run is not None else at
            if task.kind == "recurring" and upcoming < at:
                upcoming = next_run(task.kind, task.schedule, at)
            await tx.execute(
                "UPDATE scheduled_tasks SET status = 'scheduled', next_run = $2 WHERE id = $1",
                task_id, upcoming)
        return dataclasses.replace(task, status="scheduled", next_run=upcoming)

    async def update(self, formation: str, task_id: str, *, schedule: str | None = None,
                     message: str | None = None, title: str | None = None,
                     at: float | None = None) -> Task:
        """Change a task's schedule, message or title, validated as when it was made; a new
        schedule sets its next run. A paused task stays paused."""
        at = now() if at is None else at
        if message is not None and not message.strip():
            raise InvalidScheduleError("a task needs a message")
        async with self.db.transaction() as tx:
            task = await self.in_formation(formation, task_id, q=tx)
            changed = dataclasses.replace(
                task,
                schedule=schedule.strip() if schedule is not None else task.schedule,
                message=message.strip() if message is not None else task.message,
                title=title if title is not None else task.title)
            if schedule is not None:
                changed = dataclasses.replace(
                    changed, next_run=next_run(task.kind, changed.schedule, at))
            if task.status not in ("scheduled", "paused"):
                raise TaskStateError(task_id, task.status, "changed")
            await tx.execute(
                "UPDATE scheduled_tasks SET schedule = $2, message = $3, title = $4,"
                " next_run = $5 WHERE id = $1",
                task_id, changed.schedule, changed.message, changed.title, changed.next_run)
        return changed

    async def counts(self, formation: str) -> dict[str, int]:
        """How many tasks of `formation` are in each state."""
        rows = await self.db.fetch(
            "SELECT status, count(*) FROM scheduled_tasks WHERE formation_id = $1"
            " GROUP BY status", formation)
        return {r[0]: int(r[1]) for r in rows}

    async def oldest_due(self, at: float | None = None) -> float | None:
        """When the most overdue task was due (one `claim_due` would take), or None."""
        at = now() if at is None else at
        value = await self.db.fetchval(
            "SELECT min(next_run) FROM scheduled_tasks WHERE"
            " (status = 'scheduled' AND next_run <= $1)"
            " OR (status = 'running' AND claimed_at < $2)", at, at - LEASE_SECONDS)
        return float(value) if value is not None else None

    async def claim_due(self, worker: str, limit: int = 50, at: float | None = None,
                        formation: str | None = None) -> builtins.list[Task]:
        """Take the due tasks (of one formation, or all) for this worker; no other worker
        gets the same ones."""
        at = now() if at is None else at
        only = " AND formation_id = $5" if formation is not None else ""
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgres" else ""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE scheduled_tasks SET status = 'running', claimed_by = $1, claimed_at = $2"
                " WHERE id IN (SELECT id FROM scheduled_tasks WHERE"
                " ((status = 'scheduled' AND next_run <= $2)"
                f" OR (status = 'running' AND claimed_at < $3)){only}"
                f" ORDER BY next_run LIMIT $4{lock})"
                f" RETURNING {_COLUMNS}",
                worker, at, at - LEASE_SECONDS, limit, *([formation] if formation else []),
            )
        return [_task(r) for r in rows]

    async def finish(self, task: Task, worker: str, *, via: str | None = None,
                     at: float | None = None, q: Any = None) -> None:
        """Mark a fired task done, or schedule a recurring one's next run."""
        at = now() if at is None else at
        if task.kind == "recurring":
            status, upcoming = "scheduled", next_run(task.kind, task.schedule, at)
        else:
            status, upcoming = "done", None
        await (q or self.db).execute(
            "UPDATE scheduled_tasks SET status = $3, next_run = $4, last_run = $5,"
            " claimed_by = NULL, claimed_at = NULL, attempts = 0, last_error = NULL,"
            " delivered_via = $6 WHERE id = $1 AND claimed_by = $2",
            task.id, worker, status, upcoming, at, via,
        )

    async def retry(self, task: Task, worker: str, *, delay: float, error: str) -> None:
        """A delivery failed: try again after `delay` seconds, the reason kept."""
        await self.db.execute(
            "UPDATE scheduled_tasks SET status = 'scheduled', next_run = $3, claimed_by = NULL,"
            " claimed_at = NULL, attempts = attempts + 1, last_error = $4"
            " WHERE id = $1 AND claimed_by = $2",
            task.id, worker, now() + delay, error[:500],
        )

    async def fail(self, task: Task, worker: str, *, error: str) -> None:
        """Give up on a task whose deliveries kept failing; the reason stays visible."""
        await self.db.execute(
            "UPDATE scheduled_tasks SET status = 'failed', next_run = NULL, claimed_by = NULL,"
            " claimed_at = NULL, attempts = attempts + 1, last_error = $3"
            " WHERE id = $1 AND claimed_by = $2",
            task.id, worker, error[:500],
        )
