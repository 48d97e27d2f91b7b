"""Small helpers every chat adapter shares: settings, splitting long replies, work in flight.

Pure and stable on purpose: adapters import from here, this imports only the supervisor's
AdapterConfigError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from gateway.conversation.messages import InboundMessage
from gateway.conversation.ports import AdapterConfigError, Conversations

log = structlog.get_logger("threadline.channels")


async def kept(engine: Conversations, message: InboundMessage | None, channel: str) -> bool:
    """Put a platform message into the inbox before the platform is acknowledged, so that
    another replica answers it if this process dies first. False when it could not be kept:
    then the platform must not be acknowledged (it sends the message again)."""
    if message is None:
        return True
    try:
        await engine.accept(message)
    except Exception as exc:  # noqa: BLE001 - anything: not kept, so not acknowledged
        log.warning("message not kept; the platform will send it again", channel=channel,
                    error=str(exc))
        return False
    return True


def setting(config: Mapping[str, Any], channel: str, key: str, default: str | None = None,
            *, required: bool = False) -> str | None:
    """One string setting of `channels.<channel>`; a required one that is missing names itself."""
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AdapterConfigError(f"channels.{channel}.{key} is required")
        return default
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise AdapterConfigError(f"channels.{channel}.{key} must be a string")
    return str(value).strip()


def choice(config: Mapping[str, Any], channel: str, key: str, options: tuple[str, ...]) -> str:
    """A setting with a fixed set of values; the first option is the default."""
    value = setting(config, channel, key, options[0])
    assert value is not None
    if value not in options:
        raise AdapterConfigError(
            f"channels.{channel}.{key} must be one of {', '.join(options)}; got {value!r}")
    return value


def number(config: Mapping[str, Any], channel: str, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise AdapterConfigError(f"channels.{channel}.{key} must be a non-negative number")
    return float(value)


def split_text(text: str, limit: int, *, size: Callable[[str], int] = len) -> list[str]:
    """Cut `text` into pieces of at most `limit` (as measured by `size`), preferring to cut
    between paragraphs, then lines, then words; blank pieces are dropped."""
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        if size(rest) <= limit:
            pieces.append(rest)
            break
        fits = _longest_prefix(rest, limit, size)
        head, rest = _cut(rest, fits)
        if head:
            pieces.append(head)
    return pieces


def _longest_prefix(text: str, limit: int, size: Callable[[str], int]) -> int:
    if size is len:
        return limit
    low, high = 1, min(len(text), limit)  # size(ch) >= 1 for every character
    while low < high:  # the longest prefix whose size fits
        middle = (low + high + 1) // 2
        if size(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _cut(text: str, fits: int) -> tuple[str, str]:
    window = text[: fits + 1]  # a separator just past the limit is still a clean cut
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator, 0, fits + 1)
        if at >= fits // 2:  # a cut too early would leave a needlessly short piece
            return text[:at].rstrip(), text[at + len(separator):].lstrip("\n ")
    for separator in ("\n", " "):
        at = window.rfind(separator, 0, fits + 1)
        if at > 0:
            return text[:at].rstrip(), text[at + 1:].lstrip("\n ")
    return text[:fits], text[fits:]


class InFlight:
    """Replies being worked on, so that a shutdown lets them finish (up to a timeout).

    Work spawned with the same `key` (a conversation) runs one at a time, in order, so a
    quick second message is answered after the first one's facts are stored."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queues: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> lock, users

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, Any], *, key: str | None = None
              ) -> asyncio.Task[Any]:
        if key is not None:
            work = self._in_order(key, work)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def _in_order(self, key: str, work: Coroutine[Any, Any, Any]) -> Any:
        lock, users = self._queues.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # asyncio locks wake their waiters first come, first served
                return await work
        finally:
            work.close()  # no-op once awaited; silences a cancelled, never-started one
            users[0] -= 1
            if not users[0]:
                del self._queues[key]

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reply failed", channel=self.channel, exc_info=task.exception())

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the work in flight; cancel what is left.

        Returns how many replies were cancelled."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("replies cancelled at shutdown", channel=self.channel,
                        count=len(pending))
        return len(pending)


class GrowingReply:
    """A reply that grows in place while the model writes it: the first piece is posted,
    later ones edit that message at most every `interval` seconds (the platforms limit
    edits), and `finish` leaves the final text, split at the platform's `limit` (a piece
    that no longer fits starts a new message). `post(text)` returns a handle that
    `edit(handle, text)` takes."""

    def __init__(self, post: Callable[[str], Coroutine[Any, Any, Any]],
                 edit: Callable[[Any, str], Coroutine[Any, Any, Any]], *, limit: int,
                 interval: float = 1.0, size: Callable[[str], int] = len) -> None:
        self._post, self._edit = post, edit
        self.limit, self.interval, self._size = limit, interval, size
        self._text = ""
        self._shown = ""  # what the platform shows in the current message
        self._handle: Any = None
        self._done: list[str] = []  # earlier messages, full
        self._last = 0.0

    @property
    def started(self) -> bool:
        return self._handle is not None

    async def add(self, piece: str) -> None:
        self._text += piece
        now = asyncio.get_running_loop().time()
        if self._handle is None or now - self._last >= self.interval:
            await self._show(self._text)
            self._last = now

    async def finish(self, text: str) -> None:
        """Show the final `text` (what was stored), in as many messages as it needs."""
        pieces = split_text(text, self.limit, size=self._size) or [text]
        already = len(self._done)
        for n, piece in enumerate(pieces):
            if n < already:
                continue  # a message that was finished while growing
            if n == already and self._handle is not None:
                if piece != self._shown:
                    await self._edit(self._handle, piece)
            else:
                self._handle = await self._post(piece)
            self._shown = piece

    async def _show(self, text: str) -> None:
        pieces = split_text(text, self.limit, size=self._size)
        while len(pieces) > len(self._done) + 1:  # the current message is full: close it
            full = pieces[len(self._done)]
            if self._handle is None:
                self._handle = await self._post(full)
            elif full != self._shown:
                await self._edit(self._handle, full)
            self._done.append(full)
            self._handle, self._shown = None, ""
        current = pieces[-1] if pieces else ""
        if not current:
            return
        if self._handle is None:
            self._handle = await self._post(current)
        elif current != self._shown:
            await self._edit(self._handle, current)
        self._shown = current
