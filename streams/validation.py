"""Validation stage, the pure part: raw Kafka bytes -> a Telemetry event or a reasoned rejection.

Every function here is pure (the same input gives the same answer, on any machine, at any time),
except `process_record`, which only loads and stores the state that the stateful rules
(`check_duplicate`, `check_clock_skew`, `judge`) take and return: the Faust agent
(`streams/app.py`) calls it with its tables, an offline reference with plain dicts.

Reasons (stable strings, counted and written into dead letters; docs/schema.md):

| reason           | when                                                                        |
|------------------|-----------------------------------------------------------------------------|
| `oversize`       | the value is longer than the byte limit (checked before parsing)            |
| `malformed_json` | a tombstone (no value), or bytes that are not one JSON document             |
| `non_finite`     | NaN / Infinity / -Infinity literals, or numbers too large for a float       |
| `missing_field`  | a required field is absent (pydantic `missing`)                             |
| `unknown_field`  | a top-level field the contract does not know (pydantic `extra_forbidden`)   |
| `wrong_type`     | a value of the wrong type (pydantic `*_type`, `*_parsing`, `enum`, ...)     |
| `invalid_fields` | any other contract violation (range, name pattern, time zone, schema id...) |
| `absurd_value`   | a known metric outside its physically possible range (`ABSURD_LIMITS`)      |
| `wrong_key`      | the Kafka key is not the record's site (the contract keys by site)          |
| `duplicate`      | seq and ts not newer than the device's last accepted sample                 |
| `clock_skew`     | event time too far ahead of the partition's clock                           |
| `stage_error`    | the stage itself failed on the record (a bug): kept here, the stage goes on |

When a record breaks several rules the reason is the first in `REASON_PRIORITY`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from dcpulse.contract import MAX_MESSAGE_BYTES, DeadLetter, Telemetry, utc_now

OVERSIZE = "oversize"
MALFORMED_JSON = "malformed_json"
NON_FINITE = "non_finite"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
INVALID_FIELDS = "invalid_fields"
ABSURD_VALUE = "absurd_value"
WRONG_KEY = "wrong_key"
DUPLICATE = "duplicate"
CLOCK_SKEW = "clock_skew"
STAGE_ERROR = "stage_error"

# The order in which the checks run, so also the tie-break when a record breaks several rules:
# the first reason in this tuple that applies is the one reported.
REASON_PRIORITY: tuple[str, ...] = (
    OVERSIZE, MALFORMED_JSON, NON_FINITE, MISSING_FIELD, UNKNOWN_FIELD, WRONG_TYPE,
    INVALID_FIELDS, ABSURD_VALUE, WRONG_KEY, DUPLICATE, CLOCK_SKEW, STAGE_ERROR,
)
REASONS = frozenset(REASON_PRIORITY)

# pydantic error types that mean "a value of the wrong type" besides the *_type / *_parsing ones.
_WRONG_TYPE_ERRORS = frozenset({"enum", "int_from_float"})


@dataclass(frozen=True)
class Rejection:
    reason: str  # stable, countable: one of REASONS (the sink adds its own, e.g. outside_retention)
    detail: str


# ---- stateless rules ---------------------------------------------------------------------------

def validate(raw: bytes | None, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Telemetry | Rejection:
    """The stateless rules, in `REASON_PRIORITY` order: size, JSON, contract, absurd values."""
    if raw is None:
        return Rejection(MALFORMED_JSON, "empty message value (tombstone)")
    if len(raw) > max_message_bytes:
        return Rejection(OVERSIZE, f"{len(raw)} bytes > limit {max_message_bytes}")
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        literal = _non_finite_literal(raw)
        if literal is not None:
            return Rejection(NON_FINITE, f"non-finite number {literal} (JSON allows finite numbers only)")
        return Rejection(MALFORMED_JSON, str(exc)[:300])
    try:
        event = Telemetry.from_bytes(raw)
    except ValidationError as exc:
        return _contract_rejection(exc)
    absurd = absurd_values(event.metrics)
    if absurd:
        return Rejection(ABSURD_VALUE, "; ".join(absurd)[:1000])
    return event


def _non_finite_literal(raw: bytes) -> str | None:
    """orjson refuses NaN, Infinity and numbers that overflow a double. If the document is
    otherwise valid JSON, name the first such value; otherwise (really malformed) None."""
    found: list[str] = []

    def constant(name: str) -> float:
        found.append(name)
        return math.nan

    try:
        parsed = json.loads(raw.decode("utf-8"), parse_constant=constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if found:
        return found[0]
    # No literal: maybe a number such as 1e400 that only overflows to infinity.
    stack: list[Any] = [parsed]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "out of float range (overflows to infinity)"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _error_reason(error: Any) -> str:
    kind = error["type"]
    if kind == "json_invalid":
        return MALFORMED_JSON
    if kind == "missing":
        return MISSING_FIELD
    if kind == "extra_forbidden":
        return UNKNOWN_FIELD
    if kind.endswith(("_type", "_parsing")) or kind in _WRONG_TYPE_ERRORS:
        return WRONG_TYPE
    value = error.get("input")
    if kind == "finite_number" or (
        kind == "value_error" and isinstance(value, float) and not math.isfinite(value)
    ):
        return NON_FINITE
    return INVALID_FIELDS


def _contract_rejection(exc: ValidationError) -> Rejection:
    """The reason of the highest-priority error; the detail lists every error, that one first."""
    errors = sorted(((REASON_PRIORITY.index(_error_reason(err)), i, err) for i, err in enumerate(exc.errors())),
                    key=lambda item: item[:2])
    reason = REASON_PRIORITY[errors[0][0]]
    detail = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for _, _, err in errors
    )
    return Rejection(reason, detail[:1000])


# Physically possible ranges by metric-name suffix (units are in the names; docs/schema.md).
# The first matching suffix decides; a metric no suffix matches is not judged. Bounds included.
ABSURD_LIMITS: tuple[tuple[str, float, float], ...] = (
    ("energy_kwh", 0.0, 1e12),       # cumulative energy registers (a reset to 0 is fine)
    ("_c", -50.0, 150.0),            # temperatures
    ("_util", 0.0, 1.0),             # utilisation fractions
    ("_w", 0.0, 200_000.0),          # power in W (servers, accelerators, fans)
    ("_kw", 0.0, 1_000_000.0),       # power in kW (PDUs, UPSs, meters, plant)
    ("_pct", 0.0, 100.0),            # percentages
    ("flow_l_min", 0.0, math.inf),   # flows
    ("volume_l", 0.0, math.inf),     # cumulative volumes
    ("_bar", 0.0, math.inf),         # pressures and pressure differences
)


@lru_cache(maxsize=4096)
def metric_limits(name: str) -> tuple[float, float] | None:
    """(low, high) for a metric name, or None if its name is not in the table. Cached: the same
    few hundred names come back on every record."""
    for suffix, low, high in ABSURD_LIMITS:
        if name.endswith(suffix):
            return low, high
    return None


def absurd_values(metrics: dict[str, float]) -> list[str]:
    """One line per metric outside its range, in the message's order (empty: all plausible)."""
    out = []
    for name, value in metrics.items():
        limits = metric_limits(name)
        if limits is not None and not limits[0] <= value <= limits[1]:
            out.append(f"metrics.{name}: {value!r} outside [{limits[0]:g}, {limits[1]:g}]")
    return out


# ---- stateful rules, as pure functions of (previous state, record) -> (verdict, new state) ------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_us(ts: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (ts - _EPOCH) // _MICROSECOND


def _iso(us: int) -> str:
    return (_EPOCH + us * _MICROSECOND).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class DeviceSeen:
    """Per device: the seq and event time (us) of its last accepted sample."""

    seq: int
    ts_us: int

    def to_state(self) -> list[int]:
        return [self.seq, self.ts_us]

    @classmethod
    def from_state(cls, state: list[int] | None) -> DeviceSeen | None:
        if state is None:
            return None
        seq, ts_us = state
        return cls(seq, ts_us)


def check_duplicate(state: DeviceSeen | None, seq: int, ts_us: int) -> tuple[Rejection | None, DeviceSeen | None]:
    """seq <= last seq and ts <= last ts: a duplicate (state unchanged). Anything else is
    accepted and becomes the new state, including a lower seq with a newer ts (the agent
    restarted and counts from 0 again)."""
    if state is not None and seq <= state.seq and ts_us <= state.ts_us:
        return Rejection(DUPLICATE, f"seq {seq} ts {_iso(ts_us)} is not newer than the last accepted "
                                    f"seq {state.seq} ts {_iso(state.ts_us)}"), state
    return None, DeviceSeen(seq, ts_us)


@dataclass(frozen=True)
class PartitionClock:
    """Per raw-topic partition: the watermark (max event time of the records accepted on it) and
    the max Kafka record timestamp (producer time) of those records, both in us."""

    watermark_us: int
    producer_us: int | None

    def to_state(self) -> list[int | None]:
        return [self.watermark_us, self.producer_us]

    @classmethod
    def from_state(cls, state: list[int | None] | None) -> PartitionClock | None:
        if state is None:
            return None
        watermark_us, producer_us = state
        return cls(watermark_us, producer_us)


def check_clock_skew(
    state: PartitionClock | None, ts_us: int, producer_us: int | None, max_skew_us: int,
) -> tuple[Rejection | None, PartitionClock | None]:
    """Is the record's event time `ts_us` too far ahead of its partition?

    The partition's clock is its watermark, advanced by the producer time that passed since
    (Kafka record timestamps: this record's minus the newest accepted one's). A record more than
    `max_skew_us` ahead of that clock is `clock_skew`, unless its event time agrees with its own
    Kafka timestamp within `max_skew_us` (live data arriving after the partition carried only
    older, e.g. replayed, data). A rejected record leaves the state unchanged; an accepted one
    moves the watermark to max(watermark, ts). The first record of a partition is accepted.
    Records behind the watermark are never rejected here (lateness is the window stage's
    business). Only the records and their order count, never the processing time: a replay at
    any speed (`dcpulse replay` keeps Kafka timestamps) gets the same verdicts. Without Kafka
    timestamps (`producer_us` None) the clock is the watermark alone.
    """
    if state is None:
        return None, PartitionClock(ts_us, producer_us)
    idle_us = 0
    if producer_us is not None and state.producer_us is not None:
        idle_us = max(0, producer_us - state.producer_us)
    ahead_us = ts_us - state.watermark_us
    live = producer_us is not None and abs(ts_us - producer_us) <= max_skew_us
    if ahead_us - idle_us > max_skew_us and not live:
        return Rejection(CLOCK_SKEW, f"ts {_iso(ts_us)} is {ahead_us / 1e6:.3f} s ahead of the partition's "
                                     f"watermark {_iso(state.watermark_us)}; allowed: {max_skew_us / 1e6:g} s "
                                     f"+ {idle_us / 1e6:.3f} s of producer time since"), state
    if producer_us is None or state.producer_us is None:
        newest = producer_us if state.producer_us is None else state.producer_us
    else:
        newest = max(producer_us, state.producer_us)
    return None, PartitionClock(max(state.watermark_us, ts_us), newest)


def judge(
    event: Telemetry, producer_us: int | None, clock: PartitionClock | None, seen: DeviceSeen | None,
    max_skew_s: float,
) -> tuple[Rejection | None, PartitionClock | None, DeviceSeen | None]:
    """Both stateful rules (duplicate, then clock skew) for a record that passed `validate`.
    The new states are the old ones unless the record is accepted."""
    ts_us = epoch_us(event.ts)
    verdict, new_seen = check_duplicate(seen, event.seq, ts_us)
    if verdict is not None:
        return verdict, clock, seen
    verdict, new_clock = check_clock_skew(clock, ts_us, producer_us, round(max_skew_s * 1e6))
    if verdict is not None:
        return verdict, clock, seen
    return None, new_clock, new_seen


def device_key(event: Telemetry) -> str:
    """Per-device state key, unique across sites (the device's samples share one raw partition)."""
    return f"{event.site}/{event.device}"


def partition_key(partition: int) -> str:
    """The partition clock's key. It is only written while processing that partition's records,
    so its changelog entries land on the same partition: co-partitioned with the raw topic."""
    return f"__partition__/{partition}"


def producer_time_us(kafka_timestamp_s: float | None) -> int | None:
    """A Kafka record timestamp as faust gives it (float seconds, None or negative if absent)."""
    if kafka_timestamp_s is None or kafka_timestamp_s < 0:
        return None
    return round(kafka_timestamp_s * 1000) * 1000


def offset_key(partition: int) -> str:
    """Key of the last raw offset handled on a partition (same table and partition as its clock)."""
    return f"__partition__/{partition}/offset"


def already_handled(clocks: Mapping[str, Any], partition: int, offset: int) -> bool:
    """True for a record redelivered after it was handled: Kafka and Faust deliver at least once,
    and a rebalance or restart rewinds to the last committed offset. Its outcome went out the
    first time; judging it again would call a forwarded record a `duplicate`, or dead-letter a
    bad one twice."""
    done = clocks.get(offset_key(partition))
    return done is not None and offset <= done


def mark_handled(clocks: MutableMapping[str, Any], partition: int, offset: int) -> None:
    """Record that the partition's records up to `offset` have had their outcome sent."""
    clocks[offset_key(partition)] = offset


def process_record(
    value: bytes | None, partition: int, producer_us: int | None,
    clocks: MutableMapping[str, Any], devices: MutableMapping[str, Any],
    *, max_clock_skew_s: float = 60.0, max_message_bytes: int = MAX_MESSAGE_BYTES, key: bytes | None,
) -> Telemetry | Rejection:
    """The whole stage for one raw record, records given in partition order: `validate`, the
    Kafka `key` against the site, then `judge` against the state loaded from `clocks` / `devices` (JSON values), storing the new
    state (assigned back) only when the record is accepted. The worker passes its partition's
    state (streams/state.py) for both; an offline reference passes dicts and gets the same
    verdicts."""
    outcome = validate(value, max_message_bytes)
    if not isinstance(outcome, Telemetry):
        return outcome
    if key != outcome.site.encode():
        return Rejection(WRONG_KEY, f"Kafka key {key!r} is not the record's site {outcome.site!r}")
    clock_key, seen_key = partition_key(partition), device_key(outcome)
    clock = PartitionClock.from_state(clocks.get(clock_key))
    seen = DeviceSeen.from_state(devices.get(seen_key))
    verdict, new_clock, new_seen = judge(outcome, producer_us, clock, seen, max_clock_skew_s)
    if verdict is not None:
        return verdict
    if new_clock is not None and new_clock != clock:
        clocks[clock_key] = new_clock.to_state()
    if new_seen is not None and new_seen != seen:
        devices[seen_key] = new_seen.to_state()
    return outcome


def dead_letter(
    rejection: Rejection, *, stage: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None,
) -> DeadLetter:
    return DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail,
        stage=stage,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key_b64=base64.b64encode(key).decode() if key is not None else None,
        original_value_b64=base64.b64encode(value or b"").decode(),
        rejected_at=utc_now(),
    )
