"""Event contract v1: what travels on the telemetry topics.

One message is one device's sample at one event time: several metrics of that device are
batched in `metrics` (name -> finite float). The Kafka key is the site: all of a site's samples
share one partition, so each device's samples keep their order and the window stage can derive
its event-time watermark from a single, fixed-order source (replays give identical windows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, StringConstraints

TELEMETRY_SCHEMA = "dcpulse.telemetry/1"
MAX_MESSAGE_BYTES = 64 * 1024

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone (UTC)")
    return value.astimezone(UTC)


# Checked inside pydantic-core (error type finite_number): this runs for every metric value.
FiniteFloat = Annotated[float, AllowInfNan(False)]
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class DeviceKind(StrEnum):
    FACILITY_METER = "facility_meter"
    UPS = "ups"
    PDU = "pdu"
    SERVER = "server"
    ACCELERATOR = "accelerator"
    CDU = "cdu"
    CHILLER = "chiller"
    COOLING_TOWER = "cooling_tower"
    DRY_COOLER = "dry_cooler"
    CRAH = "crah"
    PUMP = "pump"
    WATER_METER = "water_meter"
    LEAK_SENSOR = "leak_sensor"
    WEATHER = "weather"


class Telemetry(BaseModel):
    """A device's sample. `seq` increases by one per sample of a device (duplicate detection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_id: Literal["dcpulse.telemetry/1"] = Field(TELEMETRY_SCHEMA, alias="schema")
    site: Name
    hall: Name | None = None
    row: Name | None = None
    rack: Name | None = None
    device: Name
    kind: DeviceKind
    seq: int = Field(ge=0)
    ts: UtcDatetime = Field(description="Event time (UTC) from the agent's clock")
    metrics: dict[Name, FiniteFloat] = Field(min_length=1)

    @property
    def key(self) -> str:
        """The Kafka key: the site (see the module docstring for why not the device)."""
        return self.site

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Telemetry:
        return cls.model_validate_json(raw)


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetter(BaseModel):
    """A record the pipeline could not use, with why, where it came from and its exact bytes."""

    model_config = ConfigDict(frozen=True)

    schema_id: Literal["dcpulse.deadletter/1"] = Field("dcpulse.deadletter/1", alias="schema")
    reason: str = Field(description="Machine-readable reason, e.g. malformed_json, invalid_fields")
    detail: str
    stage: str = Field(description="Pipeline stage that rejected it, e.g. validate, sink")
    source_topic: str
    source_partition: int
    source_offset: int
    original_key_b64: str | None
    original_value_b64: str
    rejected_at: UtcDatetime

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


def point_key(measurement: str, tags: dict[str, str], time: datetime) -> str:
    """A result's identity (measurement, tags, window start), as InfluxDB keys the point."""
    return f"{measurement},{','.join(f'{k}={v}' for k, v in sorted(tags.items()))}@{time.isoformat()}"


class AnalyticsPoint(BaseModel):
    """A derived result (PUE, pPUE, efficiency, utilisation) on its way to InfluxDB.

    Keyed by (measurement, tags, time = window start): recomputing a window yields the same
    point, so at-least-once delivery overwrites instead of duplicating (docs/influx-schema.md).
    """

    model_config = ConfigDict(frozen=True)

    schema_id: Literal["dcpulse.analytics/1"] = Field("dcpulse.analytics/1", alias="schema")
    measurement: Name
    tags: dict[Name, str]
    fields: dict[Name, float | str]
    time: UtcDatetime

    @property
    def key(self) -> str:
        return point_key(self.measurement, self.tags, self.time)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))
