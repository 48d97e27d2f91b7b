"""Read what a message asks of memory, with plain patterns (no model, no network).

`understand(text)` returns an `Intent`: what kind of message it is, the key or value it is
about, and the memory `Changes` it implies. Casing, punctuation and small phrasing variants
("What is my budget", "whats my budget?", "my Budget is $5,000.") read the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.conversation.responders.base import Changes, ScheduleRequest

_SPACES = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.!?;,]+$")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})


@dataclass
class Intent:
    kind: str
    key: str = ""
    value: str = ""
    changes: Changes = field(default_factory=Changes)


def clean(text: str) -> str:
    """Single spaces, straight apostrophes, no trailing punctuation."""
    text = _SPACES.sub(" ", text.translate(_APOSTROPHES)).strip()
    return _TRAILING.sub("", text)


def fact_key(words: str) -> str:
    """`Favorite Color` -> `favorite color`; `the budget` -> `budget`."""
    key = clean(words).lower()
    key = re.sub(r"^(the|a|an) ", "", key)
    return key[:100]


_GREETING = re.compile(r"^(hi|hello|hey|hiya|howdy|yo|good (morning|afternoon|evening)|greetings)"
                       r"\b(\s+there)?(\s+\w+)?$", re.I)
_HELP = re.compile(r"^/?(help|commands|what can you do|how does this work|\?)$", re.I)
_ABOUT_ME = re.compile(r"^(what do you know about me|what do you remember( about me)?|"
                       r"tell me (everything )?(what )?you know about me|who am i)$", re.I)
_ASK = re.compile(r"^(?:what(?:'s| is|s| was|re| are)|tell me|do you (?:know|remember)|"
                  r"remind me (?:of|what)|what did i say)\s+(?:is\s+)?my\s+(.+?)(?:\s+is)?$", re.I)
_ASK_WHERE = re.compile(r"^where do i (live|work)$", re.I)
_LIVE = re.compile(r"^i (?:live|stay|reside) in (.+)$", re.I)
_WORK = re.compile(r"^i work (?:at|for) (.+)$", re.I)
_FROM = re.compile(r"^(?:i am|i'm|im) from (.+)$", re.I)
_MY_NAME = re.compile(r"^my name is (.+)$", re.I)
_REMIND_DAY = re.compile(
    r"^remind me (tomorrow|(?:on |next )?(?:monday|tuesday|wednesday|thursday|friday|saturday|"
    r"sunday))(?: at (\d{1,2})(?::(\d{2}))? ?(am|pm)?)? (?:to |that |about )?(.+)$", re.I)
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
# "I like that idea" is about what was just said, not a lasting preference.
_REFERS_BACK = re.compile(r"^(that|this|it|those|these|them|the idea)\b", re.I)
# Demonyms and other words that follow "I'm" without being a name.
_NOT_NAME_WORDS = {
    "american", "canadian", "mexican", "brazilian", "argentinian", "british", "english",
    "scottish", "irish", "welsh", "french", "german", "dutch", "belgian", "swiss", "austrian",
    "italian", "spanish", "portuguese", "greek", "turkish", "polish", "czech", "swedish",
    "norwegian", "danish", "finnish", "russian", "ukrainian", "indian", "pakistani",
    "chinese", "japanese", "korean", "vietnamese", "thai", "filipino", "indonesian",
    "australian", "african", "nigerian", "kenyan", "egyptian", "israeli", "iranian", "arab",
    "european", "asian", "vegan", "vegetarian", "christian", "muslim", "jewish", "catholic",
    "hungry", "new", "left-handed", "right-handed",
}
_DEMONYM = re.compile(r"(ian|ese|ish|ean)$", re.I)
_FORGET = re.compile(r"^(?:please )?forget (?:about )?my (.+)$", re.I)
_REMEMBER = re.compile(r"^(?:please )?(?:remember|note|keep in mind)(?: that)?:? (.+)$", re.I)
_REMIND_IN = re.compile(
    r"^remind me in (\d+) ?(second|sec|minute|min|hour|hr|day)s? (?:to |that |about )?(.+)$", re.I)
_REMIND_AT = re.compile(
    r"^remind me at (\d{1,2})(?::(\d{2}))? ?(am|pm)? (?:to |that |about )?(.+)$", re.I)
_CALL_ME = re.compile(r"^(?:please )?call me (.+)$", re.I)
_MY_X_IS = re.compile(r"^my (.+?) (?:is|are|=|was) (.+)$", re.I)
_PREFER = re.compile(r"^i (?:prefer|like|love|'d rather|would rather) (.+)$", re.I)
_I_AM = re.compile(r"^(?:i am|i'm|im) (.+)$", re.I)
_NAME_LIKE = re.compile(r"^[A-Z][\w'-]*( [A-Z][\w'-]*){0,2}$")
_UNITS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "hr": 3600,
          "day": 86400}


_SENTENCES = re.compile(r"\n+|(?<=[.!?])\s+|;\s+|,?\s+but\s+", re.I)


def understand(text: str, now: float) -> Intent:
    """What the message means; a longer message (an email: "Hi,\n\nWhat's my budget?\n
    Thanks") is read sentence by sentence, and what each part tells is kept."""
    whole = _understand_one(text, now)
    parts = [p for p in _SENTENCES.split(text.strip()) if p.strip()]
    if whole.kind != "unknown" or len(parts) < 2:
        return whole
    found = [i for i in (_understand_one(p, now) for p in parts[:20])
             if i.kind not in ("unknown", "empty")]
    if not found:
        return whole
    main = next((i for i in found if i.kind not in ("greeting", "help")), found[0])
    for other in found:
        if other is not main:
            main.changes.facts = {**other.changes.facts, **main.changes.facts}
            main.changes.preferences += other.changes.preferences
            main.changes.memories += other.changes.memories
            main.changes.tasks += other.changes.tasks
    return main


def _understand_one(text: str, now: float) -> Intent:
    said = clean(text)
    if not said:
        return Intent("empty")
    if _HELP.match(said):
        return Intent("help")
    if _GREETING.match(said):
        return Intent("greeting")
    if _ABOUT_ME.match(said):
        return Intent("about_me")
    if match := _ASK.match(said):
        return Intent("ask", key=fact_key(match.group(1)))
    if match := _ASK_WHERE.match(said):
        return Intent("ask", key="city" if match.group(1).lower() == "live" else "employer")
    if match := _FORGET.match(said):
        key = fact_key(match.group(1))
        return Intent("forget", key=key, changes=Changes(forget=[key]))
    if match := _REMIND_IN.match(said):
        seconds = int(match.group(1)) * _UNITS[match.group(2).lower()]
        when = datetime.fromtimestamp(now + seconds, UTC)
        return _reminder(match.group(3), when)
    if match := _REMIND_AT.match(said):
        return _reminder_at(match, now)
    if match := _REMIND_DAY.match(said):
        return _reminder_on(match, now)
    if match := _REMEMBER.match(said):
        note = match.group(1)
        inner = _understand_one(note, now)
        changes = Changes(memories=[note], facts=inner.changes.facts)
        return Intent("remember", value=note, changes=changes)
    if match := _CALL_ME.match(said):
        name = match.group(1).strip()
        return Intent("set_name", value=name, changes=Changes(facts={"name": name}))
    if match := _MY_NAME.match(said):
        name = match.group(1).strip()
        return Intent("set_name", value=name, changes=Changes(facts={"name": name}))
    if match := _MY_X_IS.match(said):
        key = fact_key(match.group(1))
        value = re.sub(r"^now\s+", "", match.group(2).strip(), flags=re.I)  # "is now Y"
        return Intent("set_fact", key=key, value=value, changes=Changes(facts={key: value}))
    for pattern, key in ((_LIVE, "city"), (_WORK, "employer"), (_FROM, "hometown")):
        if match := pattern.match(said):
            value = match.group(1).strip()
            return Intent("set_fact", key=key, value=value, changes=Changes(facts={key: value}))
    if match := _PREFER.match(said):
        value = match.group(1).strip()
        if "?" in text or _REFERS_BACK.match(value):
            return Intent("unknown")  # a question, or a nod to what was just said
        return Intent("prefer", value=value, changes=Changes(preferences=[value]))
    if match := _I_AM.match(said):
        rest = match.group(1).strip()
        if (_NAME_LIKE.match(rest) and rest.lower() not in _NOT_NAMES
                and not _is_demonym(rest)):
            return Intent("set_name", value=rest, changes=Changes(facts={"name": rest}))
        return Intent("about", value=rest, changes=Changes(memories=[f"I am {rest}"]))
    return Intent("unknown")


_NOT_NAMES = {"fine", "good", "ok", "okay", "here", "back", "busy", "tired", "sorry", "done"}


def _is_demonym(word: str) -> bool:
    """"Canadian", "Japanese", "British": what someone is, not what they are called. Names
    with those endings (Brian, Julian) are read as names only when they are not known
    demonyms and are asked for plainly ("call me Julian", "my name is Brian")."""
    lower = word.lower()
    return lower in _NOT_NAME_WORDS or (" " not in lower and bool(_DEMONYM.search(lower))
                                        and lower not in _COMMON_NAMES)


_COMMON_NAMES = {"brian", "ian", "julian", "adrian", "christian", "vivian", "lillian",
                 "gillian", "damian", "sebastian", "fabian", "florian", "marian", "dean",
                 "sean", "jean", "hamish", "trish"}


def _reminder(what: str, when: datetime) -> Intent:
    what = clean(what)
    request = ScheduleRequest("one_time", when.isoformat(), what)
    return Intent("remind", value=what, key=when.strftime("%H:%M UTC"),
                  changes=Changes(tasks=[request]))


def _clock(hour: str | None, minute: str | None, half: str | None,
           default_hour: int) -> tuple[int, int] | None:
    """"2", "30", "pm" -> (14, 30); None when it is no time of day."""
    h, m = int(hour or default_hour), int(minute or 0)
    half = (half or "").lower()
    if half == "pm" and h < 12:
        h += 12
    elif half == "am" and h == 12:
        h = 0
    return (h, m) if h <= 23 and m <= 59 else None


def _reminder_on(match: re.Match[str], now: float) -> Intent:
    """"tomorrow at 9", "next Monday", "on friday at 2pm" (9:00 when no time is said)."""
    day = match.group(1).lower().replace("next ", "").replace("on ", "")
    clock = _clock(match.group(2), match.group(3), match.group(4), default_hour=9)
    if clock is None:
        return Intent("bad_time", value=match.group(0))
    current = datetime.fromtimestamp(now, UTC)
    # The next such day, never today.
    ahead = 1 if day == "tomorrow" else (_DAYS.index(day) - current.weekday()) % 7 or 7
    when = (current + timedelta(days=ahead)).replace(hour=clock[0], minute=clock[1],
                                                     second=0, microsecond=0)
    intent = _reminder(match.group(5), when)
    intent.key = when.strftime("%A %H:%M UTC")
    return intent


def _reminder_at(match: re.Match[str], now: float) -> Intent:
    clock = _clock(match.group(1), match.group(2), match.group(3), default_hour=0)
    if clock is None:
        return Intent("bad_time", value=match.group(0))
    current = datetime.fromtimestamp(now, UTC)
    when = current.replace(hour=clock[0], minute=clock[1], second=0, microsecond=0)
    if when <= current:
        when += timedelta(days=1)
    return _reminder(match.group(4), when)
