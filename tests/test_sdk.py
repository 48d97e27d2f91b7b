"""Our SDK runs the spec's own snippets unchanged but for the import line."""

import asyncio

import pytest

from gateway.sdk import AsyncFormationClient, FormationClient, IdentifierConflictError
from tests.conftest import ADMIN, CLIENT


async def test_spec_snippets_run_unchanged(server):
    url, _ = server

    def spec() -> None:
        formation = FormationClient(url=url, admin_key=ADMIN, client_key=CLIENT)
        # Link email, Slack ID, and internal ID to one user
        result = formation.associate_user_identifiers(
            identifiers=[
                "alice@email.com",  # Email
                {"identifier": "U98765ABC", "type": "slack"},  # Slack
                ("user_123", "internal"),  # Internal ID
            ],
            user_id=None,  # Creates new user, or specify existing
        )
        user = result["muxi_user_id"]
        assert user.startswith("usr_")
        identifiers = formation.get_user_identifiers(user_id=user)
        assert identifiers == ["alice@email.com", "U98765ABC", "user_123"]
        # User signs up with email, later connects Slack
        formation.associate_user_identifiers(
            identifiers=["alice@email.com", ("U98765ABC", "slack")],
            user_id=user,  # Link to existing user
        )
        # Pattern 1: web + Slack
        response = formation.chat("My budget is $5,000", user_id="alice@email.com")
        assert response["user_id"] == user
        answer = formation.chat("What's my budget?", user_id="U98765ABC")
        assert "$5,000" in answer["message"]["content"]
        # Pattern 2: OAuth connection auto-matches by email
        linked = formation.associate_user_identifiers(
            identifiers=["alice@email.com", ("456", "github")], user_id=None)
        assert linked["muxi_user_id"] == user
        assert formation.resolve_user("github_456") == user
        # Conflict handling
        bob = formation.resolve_user("bob@email.com")
        with pytest.raises(IdentifierConflictError) as info:
            formation.associate_user_identifiers(identifiers=["alice@email.com"], user_id=bob)
        assert user in info.value.message
        formation.unlink_user_identifier("github_456")
        assert "github_456" not in formation.get_user_identifiers(user_id=user)
        formation.close()

    await asyncio.to_thread(spec)


async def test_the_async_client_does_the_same(server):
    url, runtime = server
    async with AsyncFormationClient(server_url=url, formation_id=runtime.settings.formation_id,
                                    admin_key=ADMIN, client_key=CLIENT) as formation:
        result = await formation.associate_user_identifiers(
            identifiers=["alice@email.com", ("U1", "slack")])
        assert await formation.get_user_identifiers(result["muxi_user_id"]) == [
            "alice@email.com", "U1"]
        with pytest.raises(IdentifierConflictError):
            other = await formation.resolve_user("bob@x.co")
            await formation.associate_user_identifiers(["U1"], user_id=other)
