"""The tools a model uses to say what to remember, and their validation.

With a model configured, memory changes come from the model's tool calls, not from the
rule reader. Each call is checked whole before anything is stored: an unknown tool, bad
JSON, a missing or oversized field, an extra field, a control character or a schedule that
does not parse refuses that call (logged, and told to the model); nothing is stored half.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from memory.tasks import next_run
from memory.types import Changes, InvalidScheduleError, ScheduleRequest


def _tool(name: str, description: str, **fields: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "additionalProperties": False,
                       "required": list(fields),
                       "properties": {k: {"type": "string", "description": v}
                                      for k, v in fields.items()}}}}


TOOLS: list[dict[str, Any]] = [
    _tool("remember_fact", "Keep a fact about the user, e.g. key 'budget', value '$5,000'. "
          "A new value for a key replaces the old one.",
          key="a short lowercase name, like budget or city", value="the fact"),
    _tool("remember_preference", "Keep how the user likes things done.",
          preference="e.g. short answers"),
    _tool("remember_note", "Keep a free-text note about the user for later.", note="the note"),
    _tool("forget_fact", "Forget a fact the user asked you to forget.", key="its name"),
    _tool("schedule_reminder", "Remind the user of something later.",
          message="what to remind them of",
          when="an ISO 8601 time with its UTC offset, or 'in N minutes/hours/days'"),
]
_LIMITS = {"key": 60, "value": 500, "preference": 300, "note": 1000, "message": 500,
           "when": 60}
_KEY = re.compile(r"^[a-z0-9][a-z0-9 _-]*$")


class ToolCallError(ValueError):
    """A tool call that is refused; the message says why."""


@dataclass
class ToolOutcome:
    changes: Changes = field(default_factory=Changes)
    results: dict[str, str] = field(default_factory=dict)  # call id -> what we tell the model
    refused: list[str] = field(default_factory=list)


def _arguments(call: dict[str, Any]) -> tuple[str, dict[str, str]]:
    function = call.get("function") or {}
    name = function.get("name")
    spec = next((t["function"] for t in TOOLS if t["function"]["name"] == name), None)
    if spec is None:
        raise ToolCallError(f"unknown tool {str(name)[:40]!r}")
    try:
        args = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise ToolCallError(f"{name}: arguments are not JSON") from None
    if not isinstance(args, dict):
        raise ToolCallError(f"{name}: arguments must be a JSON object")
    wanted = set(spec["parameters"]["properties"])
    if set(args) != wanted:
        raise ToolCallError(f"{name}: takes exactly {', '.join(sorted(wanted))}")
    for key, value in args.items():
        if not isinstance(value, str) or not value.strip():
            raise ToolCallError(f"{name}: {key} must be a non-empty string")
        if len(value) > _LIMITS[key]:
            raise ToolCallError(f"{name}: {key} is longer than {_LIMITS[key]} characters")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise ToolCallError(f"{name}: {key} contains control characters")
    return str(name), {k: v.strip() for k, v in args.items()}


def apply(calls: list[dict[str, Any]], now: float) -> ToolOutcome:
    """The changes of the valid calls; each invalid one is refused on its own."""
    outcome = ToolOutcome()
    for call in calls:
        call_id = str(call.get("id") or len(outcome.results))
        try:
            name, args = _arguments(call)
            _add(outcome.changes, name, args, now)
        except (ToolCallError, InvalidScheduleError) as exc:
            outcome.refused.append(str(exc))
            outcome.results[call_id] = f"refused: {exc}"
            continue
        outcome.results[call_id] = "done"
    return outcome


def _add(changes: Changes, name: str, args: dict[str, str], now: float) -> None:
    if name in ("remember_fact", "forget_fact"):
        key = args["key"].lower()
        if not _KEY.match(key):
            raise ToolCallError(f"{name}: key must be lowercase letters, digits, spaces, "
                                "'_' or '-'")
        if name == "forget_fact":
            changes.forget.append(key)
        else:
            changes.facts[key] = args["value"]
    elif name == "remember_preference":
        changes.preferences.append(args["preference"])
    elif name == "remember_note":
        changes.memories.append(args["note"])
    else:
        next_run("one_time", args["when"], now)  # raises on a time that does not parse
        changes.tasks.append(ScheduleRequest("one_time", args["when"], args["message"]))
