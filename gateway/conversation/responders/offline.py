"""The default responder: a deterministic memory assistant, no model and no network."""

from __future__ import annotations

from gateway.conversation.commands import HELP
from gateway.conversation.responders.base import Changes, Context, Response
from gateway.conversation.responders.rules import Intent, understand


class OfflineResponder:
    name = "offline"

    async def respond(self, context: Context, changes: Changes) -> Response:
        intent = understand(context.text, context.now)
        return Response(answer(intent, context), changes)


def _name(context: Context) -> str:
    fact = context.fact("name")
    return f", {fact.value}" if fact else ""


def answer(intent: Intent, context: Context) -> str:
    kind = intent.kind
    if kind == "greeting":
        return f"Hello{_name(context)}! What can I do for you? (say 'help' to see what I can do)"
    if kind == "help":
        return HELP
    if kind == "empty":
        return "I didn't catch anything there. Say 'help' to see what I can do."
    if kind == "set_fact":
        if intent.key in _PLACES:
            return f"Got it: {_PLACES[intent.key].format(intent.value)}."
        return f"Got it: your {intent.key} is {intent.value}."
    if kind == "set_name":
        return f"Nice to meet you, {intent.value}. I'll call you that everywhere."
    if kind == "prefer":
        return f"Noted: you prefer {intent.value}."
    if kind == "about":
        return f"Thanks, I'll remember that you're {intent.value}."
    if kind == "remember":
        return f"I'll remember that {intent.value}."
    if kind == "remind":
        return f"OK, I'll remind you to {intent.value} at {intent.key}."
    if kind == "bad_time":
        return "That isn't a time I understand; try 'remind me at 14:30 to …'."
    if kind == "forget":
        if context.fact(intent.key):
            return f"Done, I've forgotten your {intent.key}."
        return f"I didn't have your {intent.key} to begin with."
    if kind == "ask":
        return _recall(intent.key, context)
    if kind == "about_me":
        return _about_me(context)
    if context.memories:
        return "Here's what I remember that might help: " + "; ".join(
            m.content for m in context.memories[:3]
        )
    return ("I'm not sure what to do with that. Tell me things like 'my budget is $5,000' "
            "and ask 'what's my budget?', or say 'help'.")


_PLACES = {"city": "you live in {}", "employer": "you work at {}",
           "hometown": "you're from {}"}


def _recall(key: str, context: Context) -> str:
    fact = context.fact(key)
    if fact is not None:
        if key == "name":
            return f"Your name is {fact.value}."
        if key in _PLACES:
            sentence = _PLACES[key].format(fact.value)
            return sentence[0].upper() + sentence[1:] + "."
        return f"Your {key} is {fact.value}."
    if key.endswith("s") and (fact := context.fact(key[:-1])):
        return f"Your {fact.key} is {fact.value}."
    related = [m.content for m in context.memories if key in m.content.lower()]
    if related:
        return "I don't have your " + key + " as such, but you told me: " + "; ".join(related[:3])
    return f"I don't have that information: you haven't told me your {key}."


def _about_me(context: Context) -> str:
    lines = []
    for fact in context.facts:
        if fact.kind == "fact":
            lines.append(f"• your {fact.key}: {fact.value}")
    for fact in context.facts:
        if fact.kind == "preference":
            lines.append(f"• you prefer {fact.value}")
    for memory in context.recent_memories[:5]:
        lines.append(f"• {memory.content}")
    if not lines:
        return "I don't know anything about you yet. Tell me something, like 'my budget is $5,000'."
    return "Here's what I know about you:\n" + "\n".join(lines)
