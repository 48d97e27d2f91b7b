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
    `message_id` is the platform's id; a redelivery of the same id gets no second turn.
    `replay`: a redelivery of a message already answered gets the same reply again (an
    HTTP retry with the same idempotency key) rather than nothing (a platform redelivery).
    `user_id`: set when the transport has already resolved who is talking (the API).
    `shared`: others can read the conversation (a group chat, a channel), so nothing only
    for this person (a link code) is said there.
    Platform-only data rides in `extras`.
    """

    channel: str
    identifier: Any
    conversation: str
    text: str
    message_id: str | None = None
    formation: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    replay: bool = False
    user_id: str | None = None
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Private:
    """What only the person may read (a link code), asked for where others can read.

    The channel says `text` to the person alone (a direct message), and then the reply's
    own text in the shared conversation; where it cannot reach them alone, `fallback`
    instead."""

    text: str
    fallback: str


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    user_id: str
    session_id: str
    request_id: str
    private: Private | None = None


def to_payload(message: InboundMessage) -> dict[str, Any]:
    """The message as JSON-ready data for the inbox (extras that are not plain data are
    left out: a message answered from the inbox is said through the channel's delivery)."""
    return {"channel": message.channel, "identifier": _plain(message.identifier),
            "conversation": message.conversation, "text": message.text,
            "message_id": message.message_id, "formation": message.formation,
            "extras": {k: v for k, v in message.extras.items()
                       if isinstance(v, str | int | float | bool | type(None))},
            "user_id": message.user_id, "shared": message.shared}


def _plain(identifier: Any) -> Any:
    """An identifier as JSON: a value, a (value, type) pair, or a parsed identifier's one
    text form. A secret one (an api key) is never kept; the message's user_id stands for
    it (only the API sends those, and it resolves the user first)."""
    if identifier is None or isinstance(identifier, str | int):
        return identifier
    if isinstance(identifier, tuple | list):
        return [v if isinstance(v, str | int) or v is None else str(v) for v in identifier]
    if getattr(identifier, "secret", False):
        return None
    return str(getattr(identifier, "text", identifier))


def from_payload(data: Mapping[str, Any]) -> InboundMessage:
    identifier = data["identifier"]
    if isinstance(identifier, list):
        identifier = tuple(identifier)
    return InboundMessage(channel=data["channel"], identifier=identifier,
                          conversation=data["conversation"], text=data["text"],
                          message_id=data.get("message_id"), formation=data.get("formation"),
                          extras=data.get("extras") or {}, user_id=data.get("user_id"),
                          shared=bool(data.get("shared")))


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """Something the gateway says without being asked (a reminder) to a conversation."""

    channel: str
    conversation: str
    text: str
    user_id: str
    extras: Mapping[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    """What delivery needs from a channel to reach a person unprompted. A channel may also
    have `can_reach(user_id, conversation) -> bool` (a web chat page is open, an API client
    listens for events); without it, a running channel reaches everyone."""

    name: str

    async def deliver(self, message: OutboundMessage) -> None: ...
