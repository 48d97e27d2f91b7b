import pytest

from identity import IdentifierParser, InvalidIdentifierError

parse = IdentifierParser(b"test-identity-secret-0123456789").parse


@pytest.mark.parametrize(
    ("raw", "value", "kind"),
    [
        ("alice@email.com", "alice@email.com", "email"),
        ("  Alice@Email.COM ", "alice@email.com", "email"),
        ({"identifier": "U98765ABC", "type": "slack"}, "U98765ABC", "slack"),
        (("user_123", "internal"), "user_123", "internal"),
        (["user_123", "internal"], "user_123", "internal"),
        ("user_123", "user_123", None),
        (("789", "telegram"), "tg_789", "telegram"),
        ("tg_789", "tg_789", "telegram"),
        (("tg_789", "telegram"), "tg_789", "telegram"),
        ((789, "telegram"), "tg_789", "telegram"),
        (("012", "discord"), "discord_012", "discord"),
        ("discord_012", "discord_012", "discord"),
        (("456", "GitHub"), "github_456", "github"),
        (("ALICE@ACME.COM", "email"), "alice@acme.com", "email"),
        (("x", ""), "x", None),
    ],
)
def test_every_spec_form_parses_to_one_canonical_identifier(raw, value, kind):
    ident = parse(raw)
    assert (ident.value, ident.type) == (value, kind)
    assert ident.key == value


def test_telegram_number_and_prefixed_form_are_the_same_identifier():
    assert parse(("789", "telegram")).key == parse("tg_789").key


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("x" * 513, "longer than 512"),
        (("not-an-email", "email"), "not a valid email"),
        (("a@b", "email"), "not a valid email"),
        ("null", "placeholder"),
        ("Undefined", "placeholder"),
        ("anonymous", "placeholder"),
        ("None", "placeholder"),
        ("-1", "placeholder"),
        ("0", "placeholder"),
        (("a", "b", "c"), "sequence of 3"),
        ({"type": "slack"}, "needs an 'identifier'"),
        ({"identifier": "x", "kind": "slack"}, "unknown identifier fields"),
        (None, "got NoneType"),
        (12.5, "got float"),
        ({"identifier": None}, "must be a string"),
        ((True, "internal"), "must be a string"),
        (("abc", "telegram"), "numeric"),
        (("x", "Bad Type!"), "identifier type"),
        (("x", 5), "type must be a string"),
        ("h:" + "a" * 64, "reserved"),
    ],
)
def test_bad_identifiers_are_rejected_with_the_problem_named(raw, problem):
    with pytest.raises(InvalidIdentifierError, match=problem):
        parse(raw)


def test_exactly_512_characters_is_accepted():
    assert parse("x" * 512).value == "x" * 512


def test_api_keys_are_keyed_hashes_and_never_shown():
    ident = parse(("key_abc123", "api_key"))
    assert ident.key.startswith("h:") and "key_abc123" not in ident.key
    assert "key_abc123" not in repr(ident) and "key_abc123" not in str(ident)
    assert ident.display == f"api_key:…{ident.key[-8:]}"
    other_server = IdentifierParser(b"another-secret-0123456789abcdef").parse(
        ("key_abc123", "api_key")
    )
    assert other_server.key != ident.key


def test_batches_drop_exact_repeats_and_name_the_bad_position():
    parser = IdentifierParser(b"test-identity-secret-0123456789")
    batch = parser.parse_many(["tg_789", ("789", "telegram"), "a@b.co"])
    assert [i.key for i in batch] == ["tg_789", "a@b.co"]
    with pytest.raises(InvalidIdentifierError, match=r"identifiers\[1\]") as info:
        parser.parse_many(["ok", "null"])
    assert info.value.field == "identifiers[1]"
    with pytest.raises(InvalidIdentifierError, match="must not be empty"):
        parser.parse_many([])
    with pytest.raises(InvalidIdentifierError, match="must be a list"):
        parser.parse_many("alice@email.com")


@pytest.mark.parametrize(("text", "value", "kind"), [
    ("slack:U98765ABC", "U98765ABC", "slack"),
    ("U98765ABC:slack", "U98765ABC", "slack"),  # the older order, still read
    ("telegram:789", "tg_789", "telegram"),
    ("internal:user_123", "user_123", "internal"),
    ("email:Alice@Acme.com", "alice@acme.com", "email"),
    ("https://example.com/a", "https://example.com/a", None),  # no type in sight
])
def test_the_one_text_form_reads_every_type(text, value, kind):
    ident = parse(text)
    assert (ident.value, ident.type) == (value, kind)


@pytest.mark.parametrize("raw", [
    "alice@acme.com", "tg_789", ("789", "telegram"), ("U98765ABC", "slack"),
    ("user_123", "internal"), "user_123", ("discord_012", "discord"), ("456", "github"),
    "josé", "urn:isbn:123"])
def test_the_text_form_round_trips(raw):
    ident = parse(raw)
    assert parse(ident.text) == ident


@pytest.mark.parametrize(("raw", "problem"), [
    ("foo:slakc", "did you mean 'slack'"),
    ("slakc:foo", "did you mean 'slack'"),
    (("foo", "slakc"), "known types: api_key, discord"),
    ("x y:slack", "not a slack id"),
    (("alice", "slack"), "not a slack id"),
])
def test_typos_and_misshapen_ids_are_errors_not_new_types(raw, problem):
    with pytest.raises(InvalidIdentifierError, match=problem):
        parse(raw)


def test_a_formation_may_declare_more_types():
    crm = IdentifierParser(b"test-identity-secret-0123456789", extra_types=["crm"])
    assert crm.parse("crm:A-17").type == "crm"
    with pytest.raises(InvalidIdentifierError, match="unknown identifier type 'crm'"):
        parse(("A-17", "crm"))
