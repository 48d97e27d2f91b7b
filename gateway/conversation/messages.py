"""The contracts between channels and the engine. Imports nothing else from Threadline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from a person, as every channel normalizes it.

    `identifier` is any form the identity core accepts, e.g. ("U98765ABC", "slack").
    `conversation` names the conversation within the channel (a Slack thread, a Telegram
    chat, an email thread, a web chat tab): one conversation is one session.
    `message_id` is the platform's id; a redelivery of the same id is not answered twice.
    Platform-only data rides in `extras`.
    """

    channel: str
    identifier: Any
    conversation: str
    text: str
    message_id: str | None = None
    formation: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    user_id: str
    session_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """Something the gateway says without being asked (a reminder) to a conversation."""

    channel: str
    conversation: str
    text: str
    user_id: str
    extras: Mapping[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    """What the engine needs from a channel to reach a person unprompted."""

    name: str

    async def deliver(self, message: OutboundMessage) -> None: ...
