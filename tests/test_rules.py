"""The offline reader: what it understands, and the misreadings it no longer makes."""

from datetime import UTC, datetime

import pytest

from gateway.conversation.responders.rules import understand

SUNDAY_NOON = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("text", "kind", "facts"), [
    ("I'm Canadian", "about", {}),  # once read as name=Canadian
    ("I am Japanese", "about", {}),
    ("I'm Alex", "set_name", {"name": "Alex"}),
    ("I am Brian", "set_name", {"name": "Brian"}),
    ("my name is Julia", "set_name", {"name": "Julia"}),
    ("I live in Berlin", "set_fact", {"city": "Berlin"}),
    ("I work at Acme Corp", "set_fact", {"employer": "Acme Corp"}),
    ("I'm from Lyon", "set_fact", {"hometown": "Lyon"}),
    ("my budget is now $6,000", "set_fact", {"budget": "$6,000"}),
])
def test_statements_about_oneself(text, kind, facts):
    intent = understand(text, SUNDAY_NOON)
    assert (intent.kind, intent.changes.facts) == (kind, facts)


def test_a_question_beside_a_statement_is_not_a_preference():
    intent = understand("I like that idea but what is my budget?", SUNDAY_NOON)
    assert (intent.kind, intent.key) == ("ask", "budget")
    assert intent.changes.preferences == []
    assert understand("I like it", SUNDAY_NOON).changes.preferences == []
    assert understand("I prefer short answers", SUNDAY_NOON).changes.preferences == [
        "short answers"]


@pytest.mark.parametrize(("text", "when", "what"), [
    ("remind me tomorrow at 9 to call Bob", "2026-11-30T09:00:00+00:00", "call Bob"),
    ("remind me next Monday to send the report", "2026-11-30T09:00:00+00:00",
     "send the report"),
    ("remind me on friday at 2pm to stretch", "2026-12-04T14:00:00+00:00", "stretch"),
    ("remind me on sunday to rest", "2026-12-06T09:00:00+00:00", "rest"),  # never today
])
def test_reminders_on_days(text, when, what):
    [task] = understand(text, SUNDAY_NOON).changes.tasks
    assert (task.schedule, task.message) == (when, what)


def test_where_questions_ask_for_places():
    assert understand("where do I live?", SUNDAY_NOON).key == "city"
    assert understand("Where do I work", SUNDAY_NOON).key == "employer"
