"""Event contract v2: what travels on the telemetry topics.

One message is one **agent's samples of one tick** (`TelemetryBatch`): a rack agent publishes
its PDU and its servers (each server carrying its accelerators) together, a hall agent the
hall's UPS, CDUs, leak sensors and CRAHs, the facility agent the site's plant. Each sample keeps
the v1 fields (device, kind, seq, ts, metrics, location). The Kafka key is the agent
(`<site>/<agent>`, `agent_key`): one agent's samples stay in order on one partition, and one
site's agents spread over every partition.

Event time moves only on **watermark records** (`Watermark`) that a site's producer sends to
every partition of the raw topic after each tick: "no sample of this site with ts < `ts` will
follow". A partition that carries none of a site's agents still hears the site's watermarks,
so windows close on every partition, deterministically, at any replay speed
(docs/architecture.md, "Event time").
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, StringConstraints

TELEMETRY_SCHEMA = "dcpulse.telemetry/2"
WATERMARK_SCHEMA = "dcpulse.watermark/1"
DEADLETTER_SCHEMA = "dcpulse.deadletter/2"
ANALYTICS_SCHEMA = "dcpulse.analytics/1"
PARTIAL_SCHEMA = "dcpulse.partial/1"
TELEMETRY_V1_SCHEMA = "dcpulse.telemetry/1"  # recordings only: converted on replay
MAX_MESSAGE_BYTES = 512 * 1024  # one agent's tick: a 64-server rack is about 100 KiB
MAX_SAMPLES = 4096
# A dead letter keeps at most this much of the original value (plus its size and sha256), so a
# dead letter always fits the worker's producer limit whatever the broker accepted.
DEADLETTER_ORIGINAL_BYTES = 256 * 1024

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


# What InfluxDB can store (signed 64-bit nanoseconds since the epoch), to the second.
EARLIEST_TS = datetime(1677, 9, 22, tzinfo=UTC)
LATEST_TS = datetime(2262, 4, 11, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone (UTC)")
    if not EARLIEST_TS <= value <= LATEST_TS:
        raise ValueError(f"{value.isoformat()} is outside the time range InfluxDB can store "
                         f"({EARLIEST_TS.date()} .. {LATEST_TS.date()})")
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


class Contract(BaseModel):
    """Base of every message model: frozen, JSON out by alias (`schema`)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


class Sample(Contract):
    """One device's sample. `seq` increases by one per sample of a device (duplicate detection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name
    kind: DeviceKind
    hall: Name | None = None
    row: Name | None = None
    rack: Name | None = None
    cdu: Name | None = Field(None, description="The CDU whose loop cools the device (liquid-cooled halls)")
    feed: Name | None = Field(None, description="The UPS feed that powers the device")
    seq: int = Field(ge=0, le=2**63 - 1)
    ts: UtcDatetime = Field(description="Event time (UTC) from the agent's clock")
    metrics: dict[Name, FiniteFloat] = Field(min_length=1)


class TelemetryBatch(Contract):
    """One agent's samples of one tick. Key: `agent_key(site, agent)`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["dcpulse.telemetry/2"] = Field(TELEMETRY_SCHEMA, alias="schema")
    site: Name
    agent: Name = Field(description="The publishing agent, e.g. rack-a-r01-k01, hall-a, facility")
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES)

    @property
    def key(self) -> str:
        return agent_key(self.site, self.agent)


class BatchEnvelope(BaseModel):
    """A batch's own fields, samples left unparsed: a bad sample must not sink its siblings."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["dcpulse.telemetry/2"] = Field(TELEMETRY_SCHEMA, alias="schema")
    site: Name
    agent: Name
    samples: list[Any] = Field(min_length=1, max_length=MAX_SAMPLES)


class Watermark(Contract):
    """Punctuation from a site's producer, sent to every raw partition: no sample of `site` with
    an event time before `ts` will follow (later ones are late)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["dcpulse.watermark/1"] = Field(WATERMARK_SCHEMA, alias="schema")
    site: Name
    producer: Name = Field(description="Who sent it (e.g. simulate, replay), for tracing")
    ts: UtcDatetime


def agent_key(site: str, agent: str) -> str:
    """The Kafka key of an agent's batches."""
    return f"{site}/{agent}"


def watermark_key(site: str) -> str:
    """The Kafka key of a site's watermark records (their partition is chosen explicitly)."""
    return f"{site}/~watermark"


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeadLetter(Contract):
    """A record (or one sample of it) the pipeline could not use: why, where it came from, and
    the original bytes, bounded to `DEADLETTER_ORIGINAL_BYTES` with the full size and digest."""

    schema_id: Literal["dcpulse.deadletter/2"] = Field(DEADLETTER_SCHEMA, alias="schema")
    reason: str = Field(description="Machine-readable reason, e.g. malformed_json, invalid_fields")
    detail: str
    stage: str = Field(description="Pipeline stage that rejected it, e.g. validate, sink")
    source_topic: str
    source_partition: int
    source_offset: int
    sample_index: int | None = Field(None, description="Index of the rejected sample in its batch; "
                                                       "null: the whole record")
    original_key_b64: str | None
    original_value_b64: str = Field(description="The original value (the sample's JSON for one sample), "
                                                "at most DEADLETTER_ORIGINAL_BYTES of it")
    original_size: int = Field(description="Length of the whole original value in bytes")
    original_sha256: str
    original_truncated: bool
    rejected_at: UtcDatetime


def point_key(measurement: str, tags: dict[str, str], time: datetime) -> str:
    """A result's identity (measurement, tags, window start), as InfluxDB keys the point."""
    return f"{measurement},{','.join(f'{k}={v}' for k, v in sorted(tags.items()))}@{time.isoformat()}"


class AnalyticsPoint(Contract):
    """A derived result (PUE, pPUE, efficiency, utilisation) on its way to InfluxDB.

    Keyed by (measurement, tags, time = window start): recomputing a window yields the same
    point, so at-least-once delivery overwrites instead of duplicating (docs/influx-schema.md).
    """

    schema_id: Literal["dcpulse.analytics/1"] = Field(ANALYTICS_SCHEMA, alias="schema")
    measurement: Name
    tags: dict[Name, str]
    fields: dict[Name, float | str]
    time: UtcDatetime

    @property
    def key(self) -> str:
        return point_key(self.measurement, self.tags, self.time)
