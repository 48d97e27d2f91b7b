"""Response shapes that more than one route module answers with. Times are `datetime` here
(documented as ISO 8601 strings); the routes send them as `iso()` makes them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Probe(BaseModel):
    status: str = Field(description="`up` or `down`")
    error: str | None = Field(None, description="why it is down")


class CacheReport(Probe):
    status: str = Field(description="`up`, or `degraded` (lookups go to the database)")
    tiers: list[str] | None = Field(None, description="`memory`, `redis`")
    bus: str | None = Field(None, description="how the other replicas are told of changes")


class ChannelReport(BaseModel):
    status: str = Field(description="`starting`, `up`, `retrying`, `standby` (another "
                                    "replica runs it) or `stopped`")
    since: datetime | None = None
    detail: str | None = None
    last_error: str | None = None
    failures: int | None = None
    shards: dict[str, ChannelReport] | None = Field(
        None, description="A sharded channel (Discord with `shards`): each shard's own "
                          "report, by shard number, for the shards this replica runs")


class ResponderReport(Probe):
    name: str


class Components(BaseModel):
    database: Probe
    cache: CacheReport
    channels: dict[str, ChannelReport]
    responder: ResponderReport


class TypedIdentifier(BaseModel):
    identifier: str
    type: str | None


class DatedIdentifier(TypedIdentifier):
    created_at: datetime


class Deleted(BaseModel):
    id: str
    deleted: bool


def sse_event(*events: str) -> dict[str, object]:
    """One server-sent event, as OpenAPI 3.1 describes an event stream (its `schema` is an
    event's): `event` one of `events` (`message` when the frame names none), `data` JSON."""
    return {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": list(events)},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"}, "retry": {"type": "integer"}}}
