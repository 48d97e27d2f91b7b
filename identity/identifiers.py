"""Turn every identifier form the spec shows into one canonical `Identifier`.

Accepted forms: "alice@email.com", {"identifier": "U98765ABC", "type": "slack"},
("user_123", "internal"), an `Identifier` already parsed, and the one text form used
everywhere text is (the CLI, API paths and headers, the web chat, logs):

    alice@acme.com      an email (the type is implied)
    tg_789              a Telegram user (likewise discord_…, github_…)
    slack:U98765ABC     any other type: `type:value`
    user_123            a value with no type

`Identifier.text` gives that form back and parses to the same identifier. The older
`value:type` order (`U98765ABC:slack`) is still read when it is unambiguous. Types are a
closed set (`KNOWN_TYPES` plus any a formation file declares); an unknown one is an error
that names the known ones.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

from identity.types import Identifier, InvalidIdentifierError

MAX_LENGTH = 512

KNOWN_TYPES = frozenset(
    {"email", "slack", "github", "telegram", "discord", "api_key", "internal"}
)
# Platforms whose ids are bare numbers: the canonical value carries the spec's prefix,
# so ("789", "telegram") and "tg_789" are one identifier.
NUMERIC_PREFIXES = {"telegram": "tg_", "discord": "discord_", "github": "github_"}
SECRET_TYPES = frozenset({"api_key"})

_JUNK = frozenset(
    {"null", "undefined", "anonymous", "none", "nil", "nan", "-1", "0", "(null)", "[object object]"}
)
_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_PREFIXED = {prefix: kind for kind, prefix in NUMERIC_PREFIXES.items()}
_PREFIXED_VALUE = re.compile(r"^(tg_|discord_|github_)(\d{1,32})$")
# The stored form of secret identifiers; no plain value may take that shape.
_HASHED_KEY = re.compile(r"^h:[0-9a-f]{64}$")
# Ids whose shape the platform fixes: a typo or a display name is refused, not stored.
_SHAPES = {"slack": (re.compile(r"^[UW][A-Z0-9]{1,30}$"),
                     "Slack user ids look like U98765ABC (U or W, then capitals and digits)")}


def is_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL.match(value.lower()) is not None


class IdentifierParser:
    """Parses raw identifiers; holds the server secret that keys api-key hashes, and the
    identifier types this deployment knows (the built-in ones plus `extra_types`)."""

    def __init__(self, secret: bytes, *, extra_types: Iterable[str] = ()) -> None:
        if len(secret) < 16:
            raise ValueError("the identity secret must be at least 16 bytes")
        self._secret = secret
        extra = {_clean_type(t) for t in extra_types}
        self.types = KNOWN_TYPES | {t for t in extra if t}

    def __repr__(self) -> str:
        return "IdentifierParser(secret=***)"

    def parse(self, raw: Any) -> Identifier:
        if isinstance(raw, Identifier):
            return raw
        value, kind = self._split_text(raw) if isinstance(raw, str) else _split(raw)
        value = _clean_value(value)
        kind = self._known(_clean_type(kind))
        return self._canonical(value, kind)

    def _known(self, kind: str | None) -> str | None:
        if kind is None or kind in self.types:
            return kind
        raise InvalidIdentifierError(
            f"unknown identifier type {kind!r}{_did_you_mean(kind, self.types)}; known types: "
            f"{', '.join(sorted(self.types))} (a formation file may declare more under "
            "identity.types)", field="type")

    def _split_text(self, text: str) -> tuple[str, str | None]:
        """`type:value`, a bare value, or the older `value:type` when unambiguous."""
        head, sep, rest = text.partition(":")
        if not sep or "@" in head:
            return text, None
        name = head.strip().lower()
        if name in self.types:
            return rest, name
        value, _, tail = text.rpartition(":")
        tail_name = tail.strip().lower()
        if tail_name in self.types and value:
            return value, tail_name
        # Something shaped like `typo:value` or `value:typo`: say so rather than store it.
        for word in (name, tail_name):
            if _TYPE_NAME.match(word) and difflib.get_close_matches(word, self.types, 1, 0.75):
                self._known(word)
        return text, None

    def parse_many(self, raws: Iterable[Any]) -> list[Identifier]:
        """Parse a batch, dropping exact repeats; an empty batch is an error."""
        if isinstance(raws, (str, bytes, Mapping)) or not isinstance(raws, Iterable):
            raise InvalidIdentifierError("identifiers must be a list", field="identifiers")
        seen: dict[str, Identifier] = {}
        for position, raw in enumerate(raws):
            try:
                ident = self.parse(raw)
            except InvalidIdentifierError as exc:
                raise InvalidIdentifierError(
                    f"identifiers[{position}]: {exc}", field=f"identifiers[{position}]"
                ) from None
            seen.setdefault(ident.key, ident)
        if not seen:
            raise InvalidIdentifierError("identifiers must not be empty", field="identifiers")
        return list(seen.values())

    def hash_secret(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()

    def as_api_key(self, ident: Identifier) -> Identifier:
        """An untyped value read as the api key it may be: found by its keyed hash only."""
        return Identifier(ident.value, "api_key", "h:" + self.hash_secret(ident.value),
                          secret=True)

    def _canonical(self, value: str, kind: str | None) -> Identifier:
        if kind is None:
            if is_email(value):
                kind = "email"
            elif match := _PREFIXED_VALUE.match(value):
                kind = _PREFIXED[match.group(1)]
        if kind == "email":
            value = value.lower()
            if not is_email(value):
                raise InvalidIdentifierError(f"{value!r} is not a valid email address")
        elif kind in NUMERIC_PREFIXES:
            prefix = NUMERIC_PREFIXES[kind]
            number = value[len(prefix):] if value.startswith(prefix) else value
            if not number.isascii() or not number.isdigit():
                raise InvalidIdentifierError(
                    f"{kind} identifiers are numeric user ids (like {prefix}789), got {value!r}"
                )
            value = prefix + number
        if kind in _SHAPES and not _SHAPES[kind][0].match(value):
            raise InvalidIdentifierError(f"{value[:60]!r} is not a {kind} id: "
                                         f"{_SHAPES[kind][1]}")
        if kind in SECRET_TYPES:
            return Identifier(value, kind, "h:" + self.hash_secret(value), secret=True)
        if _HASHED_KEY.match(value):
            raise InvalidIdentifierError("identifier has the reserved form of a hashed key")
        return Identifier(value, kind, value)


def _split(raw: Any) -> tuple[Any, Any]:
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, Mapping):
        if "identifier" not in raw:
            raise InvalidIdentifierError("an identifier object needs an 'identifier' field")
        extra = set(raw) - {"identifier", "type"}
        if extra:
            raise InvalidIdentifierError(f"unknown identifier fields: {', '.join(sorted(extra))}")
        return raw["identifier"], raw.get("type")
    if isinstance(raw, (tuple, list)):
        if len(raw) == 2:
            return raw[0], raw[1]
        if len(raw) == 1:
            return raw[0], None
        raise InvalidIdentifierError(
            f"an identifier pair is (value, type); got a sequence of {len(raw)}"
        )
    raise InvalidIdentifierError(
        f"an identifier is a string, a (value, type) pair or an object; got {type(raw).__name__}"
    )


# Unicode categories Cc (controls) and Cs (surrogates), as one character class: a regular
# expression scans a value far faster than a category lookup per character.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _clean_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidIdentifierError(
            f"an identifier value must be a string, got {type(value).__name__}"
        )
    value = str(value).strip()
    if not value:
        raise InvalidIdentifierError("identifier is empty")
    if len(value) > MAX_LENGTH:
        raise InvalidIdentifierError(f"identifier is longer than {MAX_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidIdentifierError("identifier contains control characters")
    if value.lower() in _JUNK:
        raise InvalidIdentifierError(f"{value!r} is a placeholder, not an identifier")
    return str(value)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), 1, 0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _clean_type(kind: Any) -> str | None:
    if kind is None:
        return None
    if not isinstance(kind, str):
        raise InvalidIdentifierError(
            f"an identifier type must be a string, got {type(kind).__name__}", field="type"
        )
    kind = kind.strip().lower()
    if not kind:
        return None
    if not _TYPE_NAME.match(kind):
        raise InvalidIdentifierError(
            f"identifier type {kind[:40]!r} must be lowercase letters, digits, '_' or '-' "
            "(at most 32, starting with a letter)",
            field="type",
        )
    return str(kind)
