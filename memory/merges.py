"""What a merge of two users does to memory, and how an undo puts it back.

The merge hook moves the merged-away user's rows to the kept user (where both have a fact,
the kept user's wins) and returns what it moved, for the merge journal: the ids of the
moved rows, the merged-away user's facts as they were (the dropped ones too) and its
synopsis. The undo hook moves those rows back, puts the facts and the synopsis back, and
rebuilds the kept user's synopsis. What the kept user gained since the merge stays with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from identity.types import MergeRecord
from memory.user_memory import UserMemory

PART = "memory"  # memory's part of a merge journal entry
# Rows that move by id, table by table (a session's messages follow their session).
MOVED = ("memories", "working_memory", "credentials", "scheduled_tasks", "sessions")
_FACTS = "SELECT kind, key, value, updated_at, source FROM facts WHERE user_id = $1"
# ($1 kept user, $2 merged-away user): the kept user's facts win over the merged one's.
_MERGE_FACTS = (
    "DELETE FROM facts WHERE user_id = $2 AND EXISTS (SELECT 1 FROM facts AS k"
    " WHERE k.user_id = $1 AND k.kind = facts.kind AND k.key = facts.key)",
    "UPDATE facts SET user_id = $1 WHERE user_id = $2",
)
_DROP_PROFILE = "DELETE FROM user_profiles WHERE user_id = $2 AND user_id <> $1"


async def merge_into(users: UserMemory, tx: Any, keep: str, absorb: str) -> dict[str, Any]:
    """Inside the merge's transaction: move `absorb`'s memory to `keep`, rebuild `keep`'s
    synopsis, and say what moved."""
    kept = {(r[0], r[1]): r[2] for r in await tx.fetch(_FACTS, keep)}
    facts = [{"kind": r[0], "key": r[1], "value": r[2], "updated_at": r[3], "source": r[4]}
             for r in sorted(await tx.fetch(_FACTS, absorb), key=lambda r: (r[0], r[1]))]
    synopsis = await tx.fetchval("SELECT synopsis FROM user_profiles WHERE user_id = $1",
                                 absorb)
    for statement in _MERGE_FACTS:
        await tx.execute(statement, keep, absorb)
    moved = {}
    for table in MOVED:
        rows = await tx.fetch(
            f"UPDATE {table} SET user_id = $1 WHERE user_id = $2 RETURNING id", keep, absorb)
        moved[table] = sorted(r[0] for r in rows)
    await tx.execute(_DROP_PROFILE, keep, absorb)
    await users.refresh_synopsis(keep, q=tx)
    return {PART: {
        "facts": [f for f in facts if (f["kind"], f["key"]) not in kept],
        "dropped_facts": [{**f, "kept_value": kept[(f["kind"], f["key"])]}
                          for f in facts if (f["kind"], f["key"]) in kept],
        **moved,
        "synopsis": synopsis,
    }}


async def unmerge(users: UserMemory, tx: Any, record: MergeRecord) -> None:
    """Inside the undo's transaction: give the recreated user back what the merge moved."""
    part = (record.parts or {}).get(PART)
    if part is None:
        return
    keep, absorb = record.kept_user, record.merged_user
    for table in MOVED:
        if part[table]:
            await tx.executemany(
                f"UPDATE {table} SET user_id = $1 WHERE id = $2 AND user_id = $3",
                [(absorb, row_id, keep) for row_id in part[table]])
    if part["facts"]:  # the moved facts the kept user has not changed since leave it
        await tx.executemany(
            "DELETE FROM facts WHERE user_id = $1 AND kind = $2 AND key = $3"
            " AND updated_at = $4",
            [(keep, f["kind"], f["key"], f["updated_at"]) for f in part["facts"]])
    restored = part["facts"] + part["dropped_facts"]
    if restored:
        await tx.executemany(
            "INSERT INTO facts (user_id, kind, key, value, updated_at, source)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(absorb, f["kind"], f["key"], f["value"], f["updated_at"], f["source"])
             for f in restored])
    if part["synopsis"] is not None:
        await users.save_synopsis(absorb, part["synopsis"], q=tx)
    await users.refresh_synopsis(keep, q=tx)


def summary(part: Mapping[str, Any] | None) -> dict[str, Any]:
    """How much of each kind moves (moved), and the facts both users had: the kept user's
    value wins."""
    part = part or {}
    return {
        "counts": {"facts": len(part.get("facts", [])),
                   **{table: len(part.get(table, [])) for table in MOVED}},
        "fact_collisions": [
            {"kind": f["kind"], "key": f["key"], "kept_value": f["kept_value"],
             "merged_value": f["value"], "winner": "kept"}
            for f in part.get("dropped_facts", [])],
    }
