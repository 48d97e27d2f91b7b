"""Web chat pages and API event streams across replicas: each replica tells the others which
(user, channel, conversation) it has listeners for, when one starts or ends and all of them
every `interval` seconds, and hands an event to the replica whose listener should hear it.
Redis pub/sub when the cache is Redis, else PostgreSQL LISTEN/NOTIFY on a connection of its
own (the identity cache's choice); SQLite serves from one process and needs none.

What another replica announced expires after three intervals, so a replica that died
stops counting within seconds. A bus that is down knows nobody elsewhere: reminders go to
the transcript, as they did before replicas could hear each other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import structlog

from gateway.conversation.live import EventHub, Presence
from identity.storage.pubsub import (
    MAX_PAYLOAD,
    listen_postgres,
    listen_redis,
    notify_postgres,
    redis_publisher,
    resubscribe,
)

log = structlog.get_logger("threadline.live")

_WARN_EVERY = 30.0  # seconds between warnings about a bus that is down

OnMessage = Callable[[str], None]


class RemoteListeners:
    """What the other replicas announced, each entry until it expires unless heard again."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        # user_id -> (channel, conversation) -> replica -> expiry (monotonic seconds)
        self._seen: dict[str, dict[tuple[str, str | None], dict[str, float]]] = {}

    def heard(self, replica: str, presences: Iterable[Presence], at: float) -> None:
        for user_id, channel, conversation in presences:
            entry = self._seen.setdefault(user_id, {}).setdefault((channel, conversation), {})
            entry[replica] = at + self.ttl

    def gone(self, replica: str, presence: Presence) -> None:
        user_id, channel, conversation = presence
        entry = self._seen.get(user_id, {}).get((channel, conversation), {})
        entry.pop(replica, None)

    def forget(self, replica: str | None = None) -> None:
        """One replica's entries (it said goodbye), or everyone's (the bus is down)."""
        if replica is None:
            self._seen.clear()
            return
        for entries in self._seen.values():
            for entry in entries.values():
                entry.pop(replica, None)

    def replicas(self, user_id: str, channel: str, conversation: str, at: float) -> set[str]:
        """The replicas that listen for this, as of `at`."""
        found: set[str] = set()
        for (listened, asked), entry in self._seen.get(user_id, {}).items():
            if listened == channel and asked in (None, conversation):
                found.update(replica for replica, until in entry.items() if until > at)
        return found

    def prune(self, at: float) -> None:
        for user_id in list(self._seen):
            entries = self._seen[user_id]
            for key in list(entries):
                live = {r: until for r, until in entries[key].items() if until > at}
                if live:
                    entries[key] = live
                else:
                    del entries[key]
            if not entries:
                del self._seen[user_id]


def _fits(message: dict[str, Any]) -> str | None:
    """The message as JSON, or None when it is too big for NOTIFY (UTF-8 as is: a reminder
    of the API's 5,000 characters fits when most of them are ASCII)."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return payload if len(payload.encode()) <= MAX_PAYLOAD else None


class LiveBus:
    """The `Relay` of gateway.conversation.live over one transport (`session`, `send`)."""

    name = "bus"

    def __init__(self, hub: EventHub, *, interval: float = 5.0) -> None:
        self.hub, self.interval = hub, interval
        self.me = uuid.uuid4().hex[:16]
        self.remote = RemoteListeners(ttl=3 * interval)
        self.healthy = False
        self._changes: list[tuple[Presence, bool]] = []
        self._wake = asyncio.Event()
        self._next_full = 0.0
        self._ask = False  # the next full announcement asks the others for theirs
        self._tasks: list[asyncio.Task[None]] = []
        self._last_warning = -_WARN_EVERY

    # -- the Relay --------------------------------------------------------------------------

    def changed(self, presence: Presence, present: bool) -> None:
        if self.healthy:  # else the whole set is announced once the bus is back
            self._changes.append((presence, present))
            self._wake.set()

    def listening(self, user_id: str, channel: str, conversation: str) -> bool:
        return self.healthy and bool(
            self.remote.replicas(user_id, channel, conversation, time.monotonic()))

    async def send(self, user_id: str, channel: str, conversation: str,
                   data: dict[str, Any]) -> bool:
        to = self.remote.replicas(user_id, channel, conversation, time.monotonic())
        if not self.healthy or not to:
            return False
        payload = _fits({"t": "ev", "s": self.me, "to": sorted(to), "u": user_id,
                         "c": channel, "v": conversation, "d": data})
        if payload is None:
            # Too big for NOTIFY (the same limit on Redis, so both buses behave alike): not
            # relayed, and the channel raises NobodyListeningError, so the scheduler keeps
            # the reminder in the conversation's transcript.
            log.warning("live event too big to relay to another replica", user_id=user_id,
                        channel=channel, limit_bytes=MAX_PAYLOAD)
            return False
        try:
            await self.send_payload(payload)
        except Exception as exc:  # noqa: BLE001 - reported once an interval, then not relayed
            self._warn("send", exc)
            return False
        return True

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.hub.relay = self
        self._tasks = [asyncio.create_task(self._listen(), name="live-bus"),
                       asyncio.create_task(self._announce(), name="live-bus-announce")]

    async def close(self) -> None:
        if self.hub.relay is self:
            self.hub.relay = None
        if self.healthy:  # the others forget this replica's listeners now, not in 15 s
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send_payload(
                    json.dumps({"t": "bye", "s": self.me})), 1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.healthy = False

    def _warn(self, what: str, exc: BaseException) -> None:
        """One warning per `_WARN_EVERY` seconds, whatever failed how often."""
        if time.monotonic() - self._last_warning >= _WARN_EVERY:
            self._last_warning = time.monotonic()
            log.warning("live event bus down; reminders reach only this replica's listeners "
                        "until it is back", bus=self.name, doing=what,
                        error=f"{type(exc).__name__}: {exc}")

    def _up(self) -> None:
        self.healthy = True
        self._next_full = 0.0  # announce everything, and ask the others to
        self._changes.clear()
        self._ask = True
        self._wake.set()

    async def _listen(self) -> None:
        def lost(error: Exception | None) -> bool:
            if error is not None:
                self._warn("listen", error)
            was_up, self.healthy = self.healthy, False
            self.remote.forget()
            return was_up

        await resubscribe(lambda: self.session(self._heard, self._up), lost)

    def _heard(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            sender, kind = str(message["s"]), message["t"]
            if sender == self.me:
                return
            if kind == "ev":
                if self.me in message["to"]:
                    self.hub.publish(str(message["u"]), str(message["c"]), str(message["v"]),
                                     dict(message["d"]))
            elif kind in ("here", "on"):
                self.remote.heard(sender, [_presence(p) for p in message["p"]],
                                  time.monotonic())
                if message.get("ask"):
                    self._next_full = 0.0
                    self._wake.set()
            elif kind == "off":
                for p in message["p"]:
                    self.remote.gone(sender, _presence(p))
            elif kind == "bye":
                self.remote.forget(sender)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.debug("live event bus: a message not understood", payload=payload[:200])

    async def _announce(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.0, self._next_full - time.monotonic()))
            self._wake.clear()
            changes, self._changes = self._changes, []
            if not self.healthy:
                self._next_full = time.monotonic() + self.interval
                continue
            try:
                if time.monotonic() >= self._next_full:
                    self._next_full = time.monotonic() + self.interval
                    ask, self._ask = self._ask, False
                    self.remote.prune(time.monotonic())
                    for payload in _batches("here", self.me, self.hub.presences(), ask=ask):
                        await self.send_payload(payload)
                for present, group in _grouped(changes):
                    for payload in _batches("on" if present else "off", self.me, group):
                        await self.send_payload(payload)
            except Exception as exc:  # noqa: BLE001 - the next full announcement repairs it
                self._warn("announce", exc)

    # -- the transport ----------------------------------------------------------------------

    async def session(self, on_message: OnMessage, on_up: Callable[[], None]) -> None:
        """Hold one subscription open: `on_up()` once subscribed, `on_message(payload)` for
        each message; return or raise when it ends."""
        raise NotImplementedError

    async def send_payload(self, payload: str) -> None:
        raise NotImplementedError


def _presence(item: Any) -> Presence:
    user_id, channel, conversation = item
    return str(user_id), str(channel), None if conversation is None else str(conversation)


def _grouped(changes: list[tuple[Presence, bool]]) -> list[tuple[bool, list[Presence]]]:
    """Runs of starts and ends, in order (a listener that came and went stays gone)."""
    runs: list[tuple[bool, list[Presence]]] = []
    for presence, present in changes:
        if runs and runs[-1][0] == present:
            runs[-1][1].append(presence)
        else:
            runs.append((present, [presence]))
    return runs


def _batches(kind: str, me: str, presences: Iterable[Presence], *,
             ask: bool = False) -> list[str]:
    """The announcement as messages each small enough for NOTIFY (an empty set is still
    said once: it carries `ask`, and tells the others this replica is there)."""
    def dump(batch: list[Presence]) -> str:
        return json.dumps({"t": kind, "s": me, "p": batch, **({"ask": 1} if ask else {})},
                          separators=(",", ":"), ensure_ascii=False)

    out: list[str] = []
    batch: list[Presence] = []
    for presence in presences:
        batch.append(presence)
        if len(dump(batch).encode()) > MAX_PAYLOAD and len(batch) > 1:
            out.append(dump(batch[:-1]))
            batch = [presence]
    if batch or not out:
        out.append(dump(batch))
    return out


class RedisLiveBus(LiveBus):
    name = "redis"
    CHANNEL = "tl:live"

    def __init__(self, hub: EventHub, url: str, *, interval: float = 5.0) -> None:
        super().__init__(hub, interval=interval)
        self.url = url
        self._publisher = redis_publisher(url)

    async def session(self, on_message: OnMessage, on_up: Callable[[], None]) -> None:
        await listen_redis(self.url, self.CHANNEL, on_message, on_up)

    async def send_payload(self, payload: str) -> None:
        await self._publisher.publish(self.CHANNEL, payload)

    async def close(self) -> None:
        await super().close()
        await self._publisher.aclose()


class PostgresLiveBus(LiveBus):
    name = "postgres"
    CHANNEL = "threadline_live"

    def __init__(self, hub: EventHub, db: Any, *, interval: float = 5.0) -> None:
        super().__init__(hub, interval=interval)
        self.db = db

    async def session(self, on_message: OnMessage, on_up: Callable[[], None]) -> None:
        await listen_postgres(self.db.url, self.CHANNEL, on_message, on_up)

    async def send_payload(self, payload: str) -> None:
        await notify_postgres(self.db, self.CHANNEL, payload)


def make_live_bus(hub: EventHub, cache_url: str, db: Any, *,
                  interval: float = 5.0) -> LiveBus | None:
    """The bus for this deployment, not started; None on SQLite (one serving process)."""
    if urlsplit(cache_url or "memory://").scheme in ("redis", "rediss"):
        return RedisLiveBus(hub, cache_url, interval=interval)
    if db.dialect == "postgres":
        return PostgresLiveBus(hub, db, interval=interval)
    return None
