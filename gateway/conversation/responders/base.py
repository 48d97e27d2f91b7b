"""What a responder sees and what it answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from memory.types import (  # noqa: F401  (Changes and ScheduleRequest are re-exported)
    Changes,
    Fact,
    Memory,
    ScheduleRequest,
    Session,
    SessionMessage,
    WorkingItem,
)


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


@dataclass
class Response:
    text: str
    changes: Changes = field(default_factory=Changes)


class Responder(Protocol):
    name: str

    async def respond(self, context: Context, changes: Changes) -> Response:
        """Answer the message; `changes` are what the extractor already found in it."""


class StreamingResponder(Responder, Protocol):
    """A responder with `streams = True` also takes `on_delta`, called with each piece of
    its answer as the model writes it."""

    streams: bool

    async def respond(self, context: Context, changes: Changes, *,
                      on_delta: Callable[[str], Awaitable[None]] | None = None) -> Response:
        ...
