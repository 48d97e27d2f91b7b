"""Channels that push over a connection the person holds open: the web chat page and the
API's event stream. Delivery publishes to whoever listens for that user now: in this
process, and through a `Relay` (gateway.runtime.live_bus) in the other replicas."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from config.errors import ThreadlineError
from gateway.conversation.messages import InboundMessage, OutboundMessage
from gateway.conversation.ports import Conversations


class NobodyListeningError(ThreadlineError, RuntimeError):
    pass


Presence = tuple[str, str, str | None]  # (user_id, channel, conversation or None: every one)


class Relay(Protocol):
    """The listeners of the other replicas, as far as this one knows them."""

    def changed(self, presence: Presence, present: bool) -> None:
        """This process started (or stopped) listening for `presence`; told to the others."""

    def listening(self, user_id: str, channel: str, conversation: str) -> bool:
        """Whether another replica listens for this now (synchronous: what was heard)."""

    async def send(self, user_id: str, channel: str, conversation: str,
                   data: dict[str, Any]) -> bool:
        """Hand the event to the replicas listening for it; False when it could not go."""


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    channel: str
    conversation: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class _Listener:
    channel: str
    conversation: str | None  # None: every conversation of the user on this channel
    queue: asyncio.Queue[Event]


class EventHub:
    """Per-user listeners in this process. A slow listener whose queue is full loses the
    event rather than stalling delivery to everyone else."""

    def __init__(self, queue_size: int = 100) -> None:
        self.queue_size = queue_size
        self._listeners: dict[str, list[_Listener]] = {}
        self._ids = itertools.count(1)
        self.relay: Relay | None = None  # set while `serve` runs with other replicas

    @contextmanager
    def listen(self, user_id: str, channel: str,
               conversation: str | None = None) -> Iterator[asyncio.Queue[Event]]:
        listener = _Listener(channel, conversation, asyncio.Queue(self.queue_size))
        presence = (user_id, channel, conversation)
        first = not self._holds(presence)
        self._listeners.setdefault(user_id, []).append(listener)
        if first and self.relay is not None:
            self.relay.changed(presence, True)
        try:
            yield listener.queue
        finally:
            listeners = self._listeners.get(user_id, [])
            listeners.remove(listener)
            if not listeners:
                self._listeners.pop(user_id, None)
            if self.relay is not None and not self._holds(presence):
                self.relay.changed(presence, False)

    def _holds(self, presence: Presence) -> bool:
        user_id, channel, conversation = presence
        return any(item.channel == channel and item.conversation == conversation
                   for item in self._listeners.get(user_id, ()))

    def presences(self) -> set[Presence]:
        """What this process listens for, each once (two tabs of a page are one)."""
        return {(user_id, item.channel, item.conversation)
                for user_id, listeners in self._listeners.items() for item in listeners}

    def _matching(self, user_id: str, channel: str, conversation: str) -> list[_Listener]:
        return [item for item in self._listeners.get(user_id, ())
                if item.channel == channel
                and (item.conversation is None or item.conversation == conversation)]

    def listening(self, user_id: str, channel: str, conversation: str) -> bool:
        """In this process or, as last heard, in another replica."""
        return bool(self._matching(user_id, channel, conversation)) or (
            self.relay is not None and self.relay.listening(user_id, channel, conversation))

    def publish(self, user_id: str, channel: str, conversation: str,
                data: dict[str, Any]) -> int:
        """Hand the event to every matching listener; returns how many took it."""
        event = Event(next(self._ids), channel, conversation, data)
        taken = 0
        for listener in self._matching(user_id, channel, conversation):
            try:
                listener.queue.put_nowait(event)
                taken += 1
            except asyncio.QueueFull:
                pass
        return taken

    async def deliver(self, user_id: str, channel: str, conversation: str,
                      data: dict[str, Any]) -> bool:
        """To every listener, here and in the other replicas (two tabs of one page on two
        replicas both hear it, as they would on one); whether anyone took it."""
        taken = self.publish(user_id, channel, conversation, data) > 0
        if self.relay is not None and self.relay.listening(user_id, channel, conversation):
            taken = await self.relay.send(user_id, channel, conversation, data) or taken
        return taken


class LiveChannel:
    """The web chat (a page listens to its own conversation) or the API (an event stream
    listens to every conversation of the user)."""

    def __init__(self, name: str, hub: EventHub) -> None:
        self.name = name
        self.hub = hub

    def can_reach(self, user_id: str, conversation: str) -> bool:
        return self.hub.listening(user_id, self.name, conversation)

    async def deliver(self, message: OutboundMessage) -> None:
        data = {"type": "message", "role": "assistant", "text": message.text,
                "channel": self.name, "conversation": message.conversation,
                "user_id": message.user_id, **message.extras}
        # Not taken (nobody listens, or the event is too big for the bus between replicas):
        # the caller keeps it in the transcript or tries again later.
        if not await self.hub.deliver(message.user_id, self.name, message.conversation, data):
            raise NobodyListeningError(f"no {self.name} client of this user is listening")


KEEP_ALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream


async def sse(hub: EventHub, user_id: str, channel: str, conversation: str | None, *,
              event: str, hello: dict[str, Any]) -> AsyncIterator[str]:
    """Server-sent events for one listener: `event: connected` with `hello`, then each
    pushed message as `event`, and a comment now and then while nothing happens."""
    with hub.listen(user_id, channel, conversation) as queue:
        yield f"event: connected\ndata: {json.dumps(hello)}\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEP_ALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"id: {item.id}\nevent: {event}\ndata: {json.dumps(item.data)}\n\n"


_RUNNING: set[asyncio.Task[None]] = set()  # turns whose listener went away still finish


async def stream_turn(conversations: Conversations,
                      message: InboundMessage) -> AsyncIterator[tuple[str, Any]]:
    """One turn as it happens: ("delta", piece) each time the model writes (responders
    that stream), then ("reply", Reply | None) or ("error", exception). The turn runs to
    its end even when the caller stops listening: an accepted message is answered."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_delta(piece: str) -> None:
        queue.put_nowait(("delta", piece))

    async def run() -> None:
        try:
            queue.put_nowait(("reply", await conversations.handle(message, on_delta=on_delta)))
        except Exception as exc:  # noqa: BLE001 - handed to the caller to report
            queue.put_nowait(("error", exc))

    task = asyncio.ensure_future(run())
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    while True:
        kind, value = await queue.get()
        yield kind, value
        if kind != "delta":
            return
