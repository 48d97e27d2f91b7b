"""Commands every channel understands before the assistant sees the message:
/start, /help, /link, /link CODE, /whoami and /unlink [N]."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.conversation.messages import Private
from identity import IdentityService, LinkedIdentifier
from identity.linking import CODE_TTL, Linker

_LINK = re.compile(r"^\s*(?:/link|link my account|link account)\s*[.!]?\s*$", re.I)
# A code as shown ("ABCDE-FGHIJ"), without its hyphen, or with a space in its place (as a
# phone's keyboard or a person reading it aloud may write it).
_REDEEM = re.compile(r"^\s*/link\s+([A-Za-z0-9-]{4,40}|[A-Za-z0-9]{5}\s+[A-Za-z0-9]{5})\s*$",
                     re.I)
_WHOAMI = re.compile(r"^\s*(?:/whoami|who am i linked as\??)\s*$", re.I)
# Telegram sends "/start" (with a deep-link payload, sometimes) when a person opens the bot.
_START = re.compile(r"^\s*/start(?:\s+\S{1,64})?\s*$", re.I)
_HELP = re.compile(r"^\s*/help\s*$", re.I)
_UNLINK = re.compile(r"^\s*/unlink(?:\s+(\d{1,3}))?\s*$", re.I)

SENT_PRIVATELY = ("I've sent you a link code in a private message: a code is never shown "
                  "where others can read it.")
ASK_PRIVATELY = ("A link code is never shown where others can read it, and I couldn't "
                 "message you privately. Send /link to me in a direct message.")

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
    return any(p.match(text) for p in (_LINK, _REDEEM, _WHOAMI, _START, _HELP, _UNLINK))


@dataclass(frozen=True)
class Answer:
    """A command's reply. `keep`: its text may be stored (with the message's claim) for a
    redelivery; a link code never is. `linked`: an identifier just joined the account of
    user `owner`."""

    text: str
    private: Private | None = None
    keep: bool = True
    linked: str | None = None
    owner: str | None = None


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
                      identity: IdentityService, linker: Linker, shared: bool = False
                      ) -> Answer:
    if _START.match(text):
        return Answer(WELCOME)
    if _HELP.match(text):
        return Answer(HELP)
    if _WHOAMI.match(text):
        items = await identity.identifiers_of(formation, user_id)
        return Answer("You are linked on:\n" + _numbered(items))
    if match := _UNLINK.match(text):
        # Audited as asked by the person, named by the type of identifier they wrote from.
        actor = f"channel:{identity.parse(identifier).type or 'unknown'}"
        return await _unlink(match.group(1), formation, user_id, identity, actor)
    if match := _REDEEM.match(text):
        return await _redeem(match.group(1), formation, identifier, user_id, identity, linker)
    code = await linker.issue(formation, user_id)
    said = (f"Your link code is {code[:5]}-{code[5:]}. Within {int(CODE_TTL // 60)} minutes, "
            f"send /link {code} from the other channel you want to connect. It works once.")
    if shared:  # others read this conversation: the code goes to the person alone
        return Answer(SENT_PRIVATELY, Private(said, ASK_PRIVATELY))
    return Answer(said, keep=False)


def _numbered(items: list[LinkedIdentifier]) -> str:
    return "\n".join(f"{n}. {item.type or 'other'}: {mask(item)}"
                     for n, item in enumerate(items, 1))


async def _unlink(number: str | None, formation: str, user_id: str,
                  identity: IdentityService, actor: str) -> Answer:
    items = await identity.identifiers_of(formation, user_id)
    if number is None or not 1 <= int(number) <= len(items):
        return Answer("Your linked channels:\n" + _numbered(items) + "\nSend /unlink N to "
                      "remove number N from your account (its memory stays with you).")
    if len(items) == 1:
        return Answer("That is your only identifier: there is nothing to unlink it from.")
    item = items[int(number) - 1]
    if item.type == "api_key":  # listed by fingerprint only: the key itself is not known
        return Answer("An API key is unlinked by the operator (threadline users unlink).")
    await identity.unlink(formation, (item.identifier, item.type), actor=actor)
    return Answer(f"Unlinked {item.type or 'other'}: {mask(item)}. It no longer reaches your "
                  "memory; messages from it start afresh.")


async def _redeem(code: str, formation: str, identifier: object, user_id: str,
                  identity: IdentityService, linker: Linker) -> Answer:
    ident = identity.parse(identifier)
    outcome = await linker.redeem(formation, ident, user_id, code)
    if outcome.status == "linked":
        return Answer("Linked! This account now shares memory with your other channels. "
                      "Say /whoami to see them all.", linked=ident.display,
                      owner=outcome.user_id)
    if outcome.status == "already":
        return Answer("This account is already linked to that user; nothing to do.")
    if outcome.status == "limited":
        return Answer("Too many wrong codes. Wait a few minutes, then ask for a new code with "
                      "/link.")
    if outcome.status == "conflict":
        return Answer(f"This account already belongs to a user with {outcome.others} other "
                      "linked channel(s), so I can't move it; nothing was changed. Unlink it "
                      "there first, or send /link from this account and redeem the code on "
                      "the other.")
    return Answer("That code is not valid or has expired. Send /link on your other channel "
                  "for a new one.")
