"""The channels this gateway can reach people on, by name."""

from __future__ import annotations

from gateway.conversation.messages import Channel, OutboundMessage


class UnknownChannelError(LookupError):
    pass


class ChannelRegistry:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def add(self, channel: Channel) -> None:
        self._channels[channel.name] = channel

    def remove(self, name: str) -> None:
        self._channels.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._channels)

    async def deliver(self, message: OutboundMessage) -> None:
        channel = self._channels.get(message.channel)
        if channel is None:
            raise UnknownChannelError(f"no channel {message.channel!r} is running")
        await channel.deliver(message)
