"""What a responder sees and what it answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from memory.types import Fact, Memory, Session, SessionMessage, WorkingItem


@dataclass(frozen=True)
class Context:
    user_id: str
    formation: str
    channel: str
    text: str
    session: Session
    synopsis: str
    facts: list[Fact]
    memories: list[Memory]  # the ones relevant to this message
    recent_memories: list[Memory]
    working: list[WorkingItem]
    buffer: list[SessionMessage]
    now: float

    def fact(self, key: str, kind: str = "fact") -> Fact | None:
        for item in self.facts:
            if item.kind == kind and item.key == key:
                return item
        return None


@dataclass(frozen=True)
class ScheduleRequest:
    kind: str  # one_time or recurring
    schedule: str
    message: str


@dataclass
class Changes:
    """Memory changes a message asks for; the engine stores them with the turn."""

    facts: dict[str, str] = field(default_factory=dict)
    preferences: list[str] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    tasks: list[ScheduleRequest] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return bool(self.facts or self.preferences or self.memories or self.forget)


@dataclass
class Response:
    text: str
    changes: Changes = field(default_factory=Changes)


class Responder(Protocol):
    name: str

    async def respond(self, context: Context, changes: Changes) -> Response:
        """Answer the message; `changes` are what the extractor already found in it."""
