"""Value types of memory. Imports only the root error."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from config.errors import ThreadlineError


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def now() -> float:
    return time.time()


class MemoryError_(ThreadlineError):
    """Root of memory errors (named so as not to shadow the builtin MemoryError)."""


class NotFoundError(MemoryError_, LookupError):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"no {what} {ident} for this user")
        self.what = what
        self.ident = ident


class InvalidScheduleError(MemoryError_, ValueError):
    pass


class TaskStateError(MemoryError_):
    """The task exists but its state forbids the change (firing right now, or finished)."""

    def __init__(self, task_id: str, status: str, wanted: str) -> None:
        super().__init__(f"scheduled job {task_id} is {status}: it cannot be {wanted}")
        self.task_id = task_id
        self.status = status


@dataclass(frozen=True, slots=True)
class Fact:
    kind: str  # "fact" or "preference"
    key: str
    value: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    content: str
    metadata: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class WorkingItem:
    channel: str
    role: str
    content: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user_id: str
    formation_id: str
    channel: str
    conversation: str
    started_at: float
    last_activity: float
    context: dict[str, Any] = field(default_factory=dict)
    is_new: bool = False

    def active(self, idle_timeout: float, at: float | None = None) -> bool:
        return (at if at is not None else now()) - self.last_activity < idle_timeout


@dataclass(frozen=True, slots=True)
class SessionMessage:
    id: str
    role: str
    content: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    service: str
    name: str
    preview: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    user_id: str
    formation_id: str
    kind: str  # "one_time" or "recurring"
    schedule: str
    message: str
    next_run: float | None
    status: str  # "scheduled", "paused", "running", "done", "failed", "cancelled"
    last_run: float | None
    created_at: float
    channel: str | None = None  # where it was asked: delivered there when that can reach
    conversation: str | None = None
    attempts: int = 0  # failed deliveries so far
    last_error: str | None = None
    delivered_via: str | None = None  # "telegram:123", or "transcript:web:tab-1"
    title: str | None = None


@dataclass(frozen=True)
class ScheduleRequest:
    kind: str  # one_time or recurring
    schedule: str
    message: str


@dataclass
class Changes:
    """Memory changes a message asks for; they are stored with the turn, in one transaction."""

    facts: dict[str, str] = field(default_factory=dict)
    preferences: list[str] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    tasks: list[ScheduleRequest] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return bool(self.facts or self.preferences or self.memories or self.forget)
