"""Small helpers every chat adapter shares: settings, splitting long replies, work in flight.

Pure and stable on purpose: adapters import from here, this imports only the supervisor's
AdapterConfigError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from gateway.conversation.ports import AdapterConfigError

log = structlog.get_logger("threadline.channels")


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
