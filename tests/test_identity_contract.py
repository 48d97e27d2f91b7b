"""Every identity behaviour, run against SQLite and PostgreSQL alike."""

import asyncio
import re

import pytest

from identity import (
    IdentifierConflictError,
    IdentifierNotFoundError,
    InvalidIdentifierError,
    UserNotFoundError,
)
from identity.storage import PostgresDatabase


async def test_first_contact_creates_a_user_and_later_contacts_find_it(identity, formation):
    user = await identity.resolve(formation, "new@email.com")
    assert re.fullmatch(r"usr_[A-Za-z0-9_-]{16,}", user)
    assert await identity.resolve(formation, "NEW@email.com ") == user
    assert await identity.store.count_users(formation) == 1
    listed = await identity.identifiers_of(formation, user)
    assert [(i.identifier, i.type) for i in listed] == [("new@email.com", "email")]


async def test_resolve_without_create_does_not_invent_users(identity, formation):
    assert await identity.resolve(formation, "ghost@email.com", create=False) is None
    assert await identity.store.count_users(formation) == 0


async def test_spec_story_links_three_identifiers_to_one_user(identity, formation):
    result = await identity.associate(
        formation,
        ["alice@email.com", {"identifier": "U98765ABC", "type": "slack"}, ("user_123", "internal")],
        user_id=None,
    )
    assert result.created_user and len(result.linked) == 3 and not result.existing
    for raw in ("alice@email.com", ("U98765ABC", "slack"), "user_123"):
        assert await identity.resolve(formation, raw) == result.user_id
    listed = await identity.identifiers_of(formation, result.user_id)
    assert [i.identifier for i in listed] == ["alice@email.com", "U98765ABC", "user_123"]
    assert [i.type for i in listed] == ["email", "slack", "internal"]
    assert all(i.created_at.tzinfo is not None for i in listed)


async def test_adding_to_an_existing_user_reports_what_was_there(identity, formation):
    user = await identity.resolve(formation, "alice@email.com")
    result = await identity.associate(
        formation, ["alice@email.com", ("U98765ABC", "slack")], user_id=user
    )
    assert (result.user_id, result.created_user) == (user, False)
    assert [i.key for i in result.linked] == ["U98765ABC"]
    assert [i.key for i in result.existing] == ["alice@email.com"]


async def test_unknown_user_id_is_an_error_and_writes_nothing(identity, formation):
    with pytest.raises(UserNotFoundError, match="usr_nobody"):
        await identity.associate(formation, ["x@y.co"], user_id="usr_nobody")
    assert await identity.resolve(formation, "x@y.co", create=False) is None


async def test_null_user_id_auto_matches_by_email(identity, formation):
    alice = await identity.resolve(formation, "alice@acme.com")  # signed up on the web
    result = await identity.associate(formation, ["alice@acme.com", ("U123", "slack")])
    assert result.user_id == alice and not result.created_user
    assert await identity.resolve(formation, ("U123", "slack")) == alice


async def test_conflict_names_the_identifier_and_its_owner_and_writes_nothing(
    identity, formation
):
    alice = await identity.resolve(formation, "alice@email.com")
    bob = await identity.resolve(formation, "bob@email.com")
    with pytest.raises(IdentifierConflictError) as info:
        await identity.associate(
            formation, [("U0NEW01", "slack"), "alice@email.com", "new@x.co"], user_id=bob
        )
    assert info.value.owner_id == alice
    assert "alice@email.com" in str(info.value) and alice in str(info.value)
    # Nothing of the batch was written, not even the identifiers listed before the conflict.
    assert await identity.resolve(formation, ("U0NEW01", "slack"), create=False) is None
    assert await identity.resolve(formation, "new@x.co", create=False) is None
    assert [i.identifier for i in await identity.identifiers_of(formation, bob)] == [
        "bob@email.com"
    ]


async def test_a_batch_touching_two_users_is_a_conflict_never_a_merge(identity, formation):
    alice = await identity.resolve(formation, "alice@email.com")
    bob = await identity.resolve(formation, "bob@email.com")
    with pytest.raises(IdentifierConflictError) as info:
        await identity.associate(formation, ["alice@email.com", "bob@email.com", "c@x.co"])
    assert {info.value.owner_id, info.value.requested_id} == {alice, bob}
    assert await identity.store.count_users(formation) == 2
    assert await identity.resolve(formation, "c@x.co", create=False) is None


async def test_unlink_removes_the_identifier_but_keeps_the_user(identity, formation):
    result = await identity.associate(formation, ["a@x.co", ("U1", "slack")])
    assert await identity.resolve(formation, ("U1", "slack")) == result.user_id  # now cached
    assert await identity.unlink(formation, ("U1", "slack")) == result.user_id
    assert await identity.resolve(formation, ("U1", "slack"), create=False) is None
    assert await identity.resolve(formation, "a@x.co") == result.user_id
    with pytest.raises(IdentifierNotFoundError):
        await identity.unlink(formation, ("U1", "slack"))
    # Contacting again after unlinking starts a new user.
    assert await identity.resolve(formation, ("U1", "slack")) != result.user_id


async def test_relinking_after_unlink_is_seen_at_once(identity, formation):
    alice = await identity.resolve(formation, "alice@x.co")
    bob = await identity.resolve(formation, "bob@x.co")
    await identity.associate(formation, [("U1", "slack")], user_id=alice)
    assert await identity.resolve(formation, ("U1", "slack")) == alice
    await identity.unlink(formation, ("U1", "slack"))
    await identity.associate(formation, [("U1", "slack")], user_id=bob)
    assert await identity.resolve(formation, ("U1", "slack")) == bob


async def test_formations_are_isolated(identity, formation):
    other = formation + "b"
    here = await identity.resolve(formation, "alice@email.com")
    there = await identity.resolve(other, "alice@email.com")
    assert here != there
    with pytest.raises(UserNotFoundError):
        await identity.identifiers_of(other, here)
    with pytest.raises(UserNotFoundError):
        await identity.associate(other, ["x@y.co"], user_id=here)
    await identity.unlink(other, "alice@email.com")
    assert await identity.resolve(formation, "alice@email.com") == here


async def test_api_keys_are_stored_hashed_and_listed_by_fingerprint(identity, formation, db):
    result = await identity.associate(formation, ["alice@x.co", ("key_abc123secret", "api_key")])
    assert await identity.resolve(formation, ("key_abc123secret", "api_key")) == result.user_id
    items = await identity.identifiers_of(formation, result.user_id)
    listed = {i.type: i.identifier for i in items}
    assert "key_abc123secret" not in listed["api_key"]
    assert re.fullmatch(r"api_key:…[0-9a-f]{8}", listed["api_key"])
    stored = await _all_identifier_values(db)
    assert not any("key_abc123secret" in value for value in stored)


async def test_identifier_gaining_a_type_keeps_its_link(identity, formation):
    user = await identity.resolve(formation, "U98765ABC")
    result = await identity.associate(formation, [("U98765ABC", "slack")], user_id=user)
    assert [i.key for i in result.existing] == ["U98765ABC"]
    assert [i.type for i in await identity.identifiers_of(formation, user)] == ["slack"]


@pytest.mark.parametrize("bad", ["", "null", "x\x00", ("a", "b", "c")])
async def test_bad_input_writes_nothing(identity, formation, bad):
    with pytest.raises(InvalidIdentifierError):
        await identity.resolve(formation, bad)
    with pytest.raises(InvalidIdentifierError):
        await identity.associate(formation, ["good@x.co", bad])
    assert await identity.store.count_users(formation) == 0


async def test_concurrent_first_contacts_make_exactly_one_user(identity, formation):
    users = await asyncio.gather(*(identity.resolve(formation, "race@x.co") for _ in range(64)))
    assert len(set(users)) == 1
    assert await identity.store.count_users(formation) == 1


async def test_concurrent_batches_for_new_identifiers_make_one_user(identity, formation):
    batch = ["burst@x.co", ("U0BURST1", "slack")]
    results = await asyncio.gather(
        *(identity.associate(formation, batch) for _ in range(16)), return_exceptions=True
    )
    owners = {r.user_id for r in results if not isinstance(r, BaseException)}
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors and len(owners) == 1
    assert await identity.store.count_users(formation) == 1
    assert sum(len(r.linked) for r in results) == 2


async def _all_identifier_values(db) -> list[str]:
    if isinstance(db, PostgresDatabase):
        async with db.reading() as conn:
            return [r[0] for r in await conn.fetch("SELECT identifier FROM user_identifiers")]
    return [r[0] for r in await db.fetchall("SELECT identifier FROM user_identifiers")]
