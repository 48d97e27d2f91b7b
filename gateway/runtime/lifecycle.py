"""A user's whole record as one document, for the API and the CLI alike."""

from __future__ import annotations

import time
from typing import Any

from gateway.runtime.wiring import Runtime
from identity import audit
from identity.audit import AuditLog
from identity.service import check_user_id
from memory.lifecycle import iso


async def export_document(rt: Runtime, formation: str, user_id: str, *,
                          actor: str) -> dict[str, Any]:
    """Identifiers, facts, memories, sessions and messages, scheduled tasks, credential
    metadata (never secrets) and the audit records about the user. The export is audited
    (who asked, when) before it is assembled. Raises UserNotFoundError."""
    check_user_id(user_id)
    identifiers = await rt.identity.identifiers_of(formation, user_id)
    async with rt.db.transaction() as tx:
        await audit.record(tx, formation, actor, "export", user_id=user_id)
    kept = await rt.memory.export_user(user_id)
    entries = await AuditLog(rt.db).entries(formation, user_id=user_id, limit=10_000)
    return {
        "user_id": user_id, "formation_id": formation, "exported_at": iso(time.time()),
        "identifiers": [{"identifier": i.identifier, "type": i.type,
                         "created_at": iso(i.created_at.timestamp())} for i in identifiers],
        **kept,
        "audit": [{"at": iso(e.at), "actor": e.actor, "action": e.action,
                   "identifier": e.identifier, "identifier_type": e.identifier_type,
                   "before": e.before, "after": e.after} for e in entries],
    }
