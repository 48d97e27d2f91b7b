"""Readiness: whether this gateway can serve, component by component.

`GET /v1/health` stays the cheap liveness probe (the process answers). `GET /v1/ready`
checks the database (without it nothing can be served: 503), the cache (without it
lookups go to the database: degraded, still 200), each
channel as the supervisor sees it, and the responder (without it the assistant apologises:
degraded, still 200)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.conversation.engine import describe
from gateway.runtime.wiring import Runtime

TIMEOUT = 2.0
RESPONDER_TTL = 15.0  # seconds a responder check is reused: probes come often


async def _probe(work: Any) -> dict[str, Any]:
    try:
        await asyncio.wait_for(work, TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        return {"status": "down", "error": describe(exc)}
    return {"status": "up"}


class Readiness:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._responder: tuple[float, dict[str, Any]] | None = None

    async def report(self) -> tuple[bool, dict[str, Any]]:
        rt = self.runtime
        database, cache = await asyncio.gather(
            _probe(rt.db.fetchval("SELECT 1")), rt.identity.cache.status())
        channels: dict[str, Any] = {"api": {"status": "up"}, "web": {"status": "up"}}
        for name, state in sorted(rt.channel_states.items()):
            channels[name] = state.report()
        components = {"database": database, "cache": cache, "channels": channels,
                      "responder": await self._check_responder()}
        # A degraded cache costs speed, not answers: lookups go to the database.
        ready = database["status"] == "up"
        degraded = (cache["status"] != "up" or components["responder"]["status"] != "up"
                    or any(c["status"] not in ("up", "standby") for c in channels.values()))
        status = "not_ready" if not ready else "degraded" if degraded else "ready"
        return ready, {"status": status, "components": components}

    async def _check_responder(self) -> dict[str, Any]:
        responder = self.runtime.engine.responder
        check = getattr(responder, "check", None)
        if check is None:
            return {"status": "up", "name": responder.name}
        if self._responder is not None and time.monotonic() - self._responder[0] < RESPONDER_TTL:
            return self._responder[1]
        result = {**await _probe(check()), "name": responder.name}
        self._responder = (time.monotonic(), result)
        return result
