"""Commands every channel understands before the assistant sees the message:
/start, /help, /link, /link CODE and /whoami."""

from __future__ import annotations

import re

from identity import IdentityService, LinkedIdentifier
from identity.linking import CODE_TTL, Linker

_LINK = re.compile(r"^\s*(?:/link|link my account|link account)\s*[.!]?\s*$", re.I)
_REDEEM = re.compile(r"^\s*/link\s+([A-Za-z0-9-]{4,40})\s*$", re.I)
_WHOAMI = re.compile(r"^\s*(?:/whoami|who am i linked as\??)\s*$", re.I)
# Telegram sends "/start" (with a deep-link payload, sometimes) when a person opens the bot.
_START = re.compile(r"^\s*/start(?:\s+\S{1,64})?\s*$", re.I)
_HELP = re.compile(r"^\s*/help\s*$", re.I)

HELP = (
    "I remember what you tell me, on every channel you have linked. Try:\n"
    "• my budget is $5,000 — then: what's my budget?\n"
    "• call me Alex · I prefer short answers · remember that the demo is on Friday\n"
    "• what do you know about me? · forget my budget\n"
    "• remind me in 10 minutes to stretch · remind me at 14:30 to call Bob\n"
    "• /link to connect another channel, /whoami to see your linked channels"
)
WELCOME = (
    "Hi! I'm your assistant, and I remember what you tell me on every channel you use.\n"
    "Say help to see what I can do. Already talk to me elsewhere (Slack, email, the web "
    "chat)? Send /link there, then /link CODE here, and I'll know you in both places."
)


def is_command(text: str) -> bool:
    return any(p.match(text) for p in (_LINK, _REDEEM, _WHOAMI, _START, _HELP))


def mask(item: LinkedIdentifier) -> str:
    """Enough to recognise one's own identifier, not enough to harvest it."""
    value = item.identifier
    if item.type == "api_key":
        return value
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 4:
        return value[:1] + "***"
    return f"{value[:3]}…{value[-2:]}"


async def run_command(text: str, *, formation: str, identifier: object, user_id: str,
                      identity: IdentityService, linker: Linker) -> str:
    if _START.match(text):
        return WELCOME
    if _HELP.match(text):
        return HELP
    if _WHOAMI.match(text):
        items = await identity.identifiers_of(formation, user_id)
        lines = [f"• {item.type or 'other'}: {mask(item)}" for item in items]
        return "You are linked on:\n" + "\n".join(lines)
    if match := _REDEEM.match(text):
        ident = identity.parse(identifier)
        outcome = await linker.redeem(formation, ident, user_id, match.group(1))
        if outcome.status == "linked":
            return ("Linked! This account now shares memory with your other channels. "
                    "Say /whoami to see them all.")
        if outcome.status == "already":
            return "This account is already linked to that user; nothing to do."
        if outcome.status == "limited":
            return "Too many wrong codes. Wait a few minutes, then ask for a new code with /link."
        if outcome.status == "conflict":
            return (f"This account already belongs to a user with {outcome.others} other linked "
                    "channel(s), so I can't move it; nothing was changed. Unlink it there "
                    "first, or send /link from this account and redeem the code on the other.")
        return ("That code is not valid or has expired. Send /link on your other channel "
                "for a new one.")
    code = await linker.issue(formation, user_id)
    return (f"Your link code is {code[:5]}-{code[5:]}. Within {int(CODE_TTL // 60)} minutes, send "
            f"/link {code} from the other channel you want to connect. It works once.")
