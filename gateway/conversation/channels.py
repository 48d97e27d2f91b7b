"""The channels this gateway can reach people on, by name, and whether they can right now."""

from __future__ import annotations

from collections.abc import Callable

from config.errors import ThreadlineError
from gateway.conversation.messages import Channel, OutboundMessage


class UnknownChannelError(ThreadlineError, LookupError):
    pass


class ChannelRegistry:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._up: dict[str, Callable[[], bool]] = {}

    def add(self, channel: Channel, *, is_up: Callable[[], bool] | None = None) -> None:
        """`is_up` tells whether the channel is connected now (the supervisor knows)."""
        self._channels[channel.name] = channel
        if is_up is not None:
            self._up[channel.name] = is_up

    def remove(self, name: str) -> None:
        self._channels.pop(name, None)
        self._up.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._channels)

    def can_reach(self, name: str, user_id: str, conversation: str) -> bool:
        """Whether a message to this conversation would reach the person now."""
        channel = self._channels.get(name)
        if channel is None:
            return False
        is_up = self._up.get(name)
        if is_up is not None and not is_up():
            return False
        reach = getattr(channel, "can_reach", None)
        return bool(reach(user_id, conversation)) if reach is not None else True

    async def deliver(self, message: OutboundMessage) -> None:
        channel = self._channels.get(message.channel)
        if channel is None:
            raise UnknownChannelError(f"no channel {message.channel!r} is running")
        await channel.deliver(message)
