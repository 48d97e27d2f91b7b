"""Platform messages claimed for answering: one turn per message, however often it arrives.

A claim is a lease: `processing` while a turn is worked on. The turn's own transaction
completes it (`answered`, the reply kept beside it), so a crash before that commit leaves
only the lease, which another process takes over once it runs out, and a crash after it
leaves the stored reply to be said on redelivery. `sent` once the channel has said it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from config.errors import ThreadlineError
from identity.storage import Database
from memory.types import now

# Seconds a claim outlives its last renewal before another process may take the message
# over. A live turn renews its claim every third of that (`Claims.renew`), however long the
# model takes; a dead process's claim is free again within this many seconds.
CLAIM_LEASE = 15.0
TURN_ATTEMPTS = 3  # turns tried on a kept message before it is given up

# New, waiting in the inbox ('queued'), or a lease run out: a turn never stored
# ('processing') or a reply never said ('answered'). One statement, so exactly one
# redelivery takes it over. The message's payload stays with the claim.
_CLAIM = (
    "INSERT INTO processed_messages"
    " (formation_id, channel, message_id, created_at, status, claim_token, payload)"
    " VALUES ($1, $2, $3, $4, 'processing', $6, $7)"
    " ON CONFLICT (formation_id, channel, message_id) DO UPDATE"
    " SET created_at = excluded.created_at, claim_token = excluded.claim_token,"
    " status = CASE WHEN processed_messages.status = 'queued' THEN 'processing'"
    " ELSE processed_messages.status END,"
    " payload = COALESCE(processed_messages.payload, excluded.payload)"
    " WHERE processed_messages.status = 'queued' OR"
    " (processed_messages.status IN ('processing', 'answered')"
    " AND processed_messages.created_at < $5)"
    " RETURNING status, reply"
)
# Into the inbox, before the platform is acknowledged; nothing when it is known already.
_ACCEPT = (
    "INSERT INTO processed_messages"
    " (formation_id, channel, message_id, created_at, status, payload)"
    " VALUES ($1, $2, $3, $4, 'queued', $5)"
    " ON CONFLICT (formation_id, channel, message_id) DO NOTHING RETURNING message_id"
)
# Completing a claim: the token proves the lease is still ours (not taken over). A reply
# said needs its message no more.
COMPLETE = (
    "UPDATE processed_messages SET status = $5, reply = $6,"
    " payload = CASE WHEN $5 = 'sent' THEN NULL ELSE payload END"
    " WHERE formation_id = $1 AND channel = $2 AND message_id = $3 AND claim_token = $4"
    " AND status = 'processing' RETURNING message_id"
)


@dataclass(frozen=True, slots=True)
class MessageKey:
    formation: str
    channel: str
    message_id: str

    @property
    def args(self) -> tuple[str, str, str]:
        return (self.formation, self.channel, self.message_id)


@dataclass(frozen=True, slots=True)
class Claim:
    """`claimed` (ours to answer, with `token`), `busy` (a process is answering or saying it
    within its lease), `answered` (ours to say: a stored reply whose sayer died) or `sent`."""

    state: str
    token: str | None = None
    reply: dict[str, Any] | None = None


class ClaimLostError(ThreadlineError):
    """The lease ran out and another process completed the message first."""


class Claims:
    def __init__(self, db: Database, *, lease: float = CLAIM_LEASE) -> None:
        self.db = db
        self.lease = lease

    async def accept(self, key: MessageKey, payload: dict[str, Any]) -> bool:
        """Keep the message in the inbox before its platform is told it arrived; False when
        it is known already (a redelivery)."""
        args = (*key.args, now(), json.dumps(payload))
        if self.db.dialect == "postgres":
            return await self.db.fetchval(_ACCEPT, *args) is not None
        async with self.db.transaction() as tx:
            return await tx.fetchval(_ACCEPT, *args) is not None

    async def due(self, *, grace: float, channels: list[str] | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
        """Payloads of messages no process is answering: queued for longer than `grace`
        (whoever acknowledged them is gone), or whose lease ran out unsaid; only those of
        `channels` when given (the ones the caller can say something on)."""
        at = now()
        args: list[Any] = [at - grace, at - self.lease, limit]
        where = ""
        if channels is not None:
            if not channels:
                return []
            if self.db.dialect == "postgres":
                args.append(channels)
                where = " AND channel = ANY($4::text[])"
            else:
                args.extend(channels)
                where = " AND channel IN (" + ", ".join(
                    f"${4 + i}" for i in range(len(channels))) + ")"
        rows = await self.db.fetch(
            "SELECT payload FROM processed_messages WHERE payload IS NOT NULL AND"
            " ((status = 'queued' AND created_at < $1)"
            " OR (status IN ('processing', 'answered') AND created_at < $2))"
            f"{where} ORDER BY created_at LIMIT $3", *args)
        return [payload for r in rows if isinstance(payload := _loaded(r[0]), dict)]

    async def waiting(self) -> tuple[int, float]:
        """The inbox, for metrics: how many kept messages are not said yet (queued, being
        answered, or answered but not said) and how long the oldest has waited since it was
        kept or last worked on (0 when none waits)."""
        row = await self.db.fetchrow(
            "SELECT count(*), min(created_at) FROM processed_messages"
            " WHERE payload IS NOT NULL")
        count, oldest = (int(row[0]), row[1]) if row is not None else (0, None)
        return count, max(0.0, now() - oldest) if oldest is not None else 0.0

    async def claim(self, key: MessageKey, *, lease: float | None = None,
                    payload: dict[str, Any] | None = None) -> Claim:
        lease = self.lease if lease is None else lease
        at, token = now(), secrets.token_hex(8)
        args = (*key.args, at, at - lease, token,
                None if payload is None else json.dumps(payload))
        if self.db.dialect == "postgres":  # one statement commits on its own
            won = await self.db.fetchrow(_CLAIM, *args)
        else:
            async with self.db.transaction() as tx:
                won = await tx.fetchrow(_CLAIM, *args)
        if won is not None:
            if won[0] == "answered":  # stored by a process that died before saying it
                return Claim("answered", token, json.loads(won[1]))
            return Claim("claimed", token)
        row = await self.db.fetchrow(
            "SELECT status, reply FROM processed_messages"
            " WHERE formation_id = $1 AND channel = $2 AND message_id = $3", *key.args)
        if row is None or row[0] in ("processing", "answered"):
            return Claim("busy")  # being answered, or said, by a process within its lease
        return Claim("sent", reply=json.loads(row[1]) if row[1] else None)

    async def complete(self, q: Any, key: MessageKey, token: str, reply: dict[str, Any], *,
                       sent: bool) -> None:
        """Inside the turn's transaction; raises ClaimLostError (rolling it back) when the
        lease was taken over."""
        status = "sent" if sent else "answered"
        if await q.fetchval(COMPLETE, *key.args, token, status, json.dumps(reply)) is None:
            raise ClaimLostError(f"message {key.message_id} was answered by another process")

    async def mark_sent(self, key: MessageKey) -> None:
        await self.db.execute(
            "UPDATE processed_messages SET status = 'sent', payload = NULL"
            " WHERE formation_id = $1 AND channel = $2 AND message_id = $3"
            " AND status = 'answered'", *key.args)

    async def expire(self, key: MessageKey) -> None:
        """Saying a stored reply failed in this process: the next redelivery may say it
        straight away instead of waiting for the lease."""
        await self.db.execute(
            "UPDATE processed_messages SET created_at = 0"
            " WHERE formation_id = $1 AND channel = $2 AND message_id = $3"
            " AND status = 'answered'", *key.args)

    async def renew(self, key: MessageKey, token: str) -> bool:
        """Keep a claim this process is still working on (answering, or saying the answer);
        False when it was taken over."""
        renewed = await self.db.fetchval(
            "UPDATE processed_messages SET created_at = $5 WHERE formation_id = $1"
            " AND channel = $2 AND message_id = $3 AND claim_token = $4"
            " AND status IN ('processing', 'answered') RETURNING message_id",
            *key.args, token, now())
        return renewed is not None

    async def release(self, key: MessageKey, token: str) -> bool:
        """A claim whose turn failed: a kept message goes back to the inbox, to be tried
        again after the inbox's grace (or at once by a redelivery), up to TURN_ATTEMPTS
        turns; then, or without a kept message, the claim is forgotten so that only a
        redelivery is answered. True when the message went back to the inbox."""
        requeued = await self.db.fetchval(
            "UPDATE processed_messages SET status = 'queued', claim_token = NULL,"
            " attempts = attempts + 1, created_at = $5 WHERE formation_id = $1"
            " AND channel = $2 AND message_id = $3 AND claim_token = $4"
            " AND status = 'processing' AND payload IS NOT NULL AND attempts + 1 < $6"
            " RETURNING message_id", *key.args, token, now(), TURN_ATTEMPTS)
        if requeued is not None:
            return True
        await self.db.execute(
            "DELETE FROM processed_messages WHERE formation_id = $1 AND channel = $2"
            " AND message_id = $3 AND claim_token = $4 AND status = 'processing'",
            *key.args, token)
        return False


def _loaded(text: str) -> Any:
    """A kept message, or None for one that cannot be read (never one that stops the
    inbox: it is skipped, and the others are answered)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
