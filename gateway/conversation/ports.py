"""The narrow ports between the channels and the conversation core.

A channel adapter is built with a `Conversations` (the few things it may ask of the core)
and implements `Adapter` (what the supervisor and delivery need of it). A channel is one
module `adapters/<name>.py` with `create(config: dict, conversations: Conversations) ->
Adapter`, enabled by a `channels.<name>` section in the formation file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from config.errors import ThreadlineError
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply

Send = Callable[[Reply], Awaitable[None]]
Ready = Callable[[str], None]


def _quiet(detail: str) -> None:
    """A `Ready` for adapters run on their own (tests, `doctor`)."""


QUIET: Ready = _quiet


class AdapterConfigError(ThreadlineError):
    """A channel's settings or credentials are wrong; the message names the setting.

    Raised from `run`, it stops the channel (retrying cannot help) with a clear report."""


class Conversations(Protocol):
    """What a channel asks of the conversation core."""

    formation: str

    async def handle(self, message: InboundMessage, send: Send | None = None, *,
                     on_delta: Callable[[str], Awaitable[None]] | None = None
                     ) -> Reply | None:
        """Answer one message, calling `send` to say the reply (and `on_delta` with each
        piece of it as the model writes, where it streams); None when it is a redelivery
        of a message already answered (or being answered elsewhere)."""

    async def accept(self, message: InboundMessage) -> bool:
        """Keep the message in the inbox before the platform is acknowledged, so that any
        replica answers it if this process dies first; False when it is known already."""

    async def owner(self, identifier: Any, *, formation: str | None = None) -> str | None:
        """The user an identifier belongs to, or None; never creates one."""

    async def link_by_email(self, identifier: Any, email: str, *,
                            formation: str | None = None) -> str | None:
        """On first contact, join `identifier` to whoever owns the verified `email` (or a new
        user with both); None when refused. An identifier with an owner is left alone."""


class Adapter(Protocol):
    name: str
    # True when the channel must run in one replica at a time (a long poll, a gateway
    # connection, a mailbox); the supervisor then runs it under a lease.
    exclusive: bool

    async def run(self, ready: Ready = QUIET) -> None:
        """Serve the channel until cancelled, calling `ready(detail)` once it is connected.
        Raising AdapterConfigError stops the channel; any other error is retried."""

    async def deliver(self, message: OutboundMessage) -> None:
        """Send a message to a conversation unprompted (reminders)."""

    async def check(self) -> str:
        """Verify credentials and reachability for `threadline doctor`; raise on a problem,
        return a one-line description (e.g. the bot's name) when fine."""

    def routes(self) -> list[Any]:
        """Starlette routes this channel serves inside the gateway (webhooks), if any."""
