"""Validation rules, pure: raw Kafka bytes -> a parsed batch whose samples are each valid or
rejected with a reason, or a rejection of the whole record.

A record that is not a batch document at all (not JSON, not the v2 envelope, a wrong key) is
rejected whole; a bad sample inside a good batch is rejected alone and its siblings go on.
Every function here returns a verdict and never raises on input.

Reasons (stable strings, counted and written into dead letters; docs/schema.md):

| reason           | applies to | when                                                               |
|------------------|------------|--------------------------------------------------------------------|
| `oversize`       | record     | the value is longer than the byte limit (checked before parsing)   |
| `malformed_json` | record     | a tombstone (no value), or bytes that are not one JSON document    |
| `non_finite`     | sample     | NaN / Infinity literals, or numbers too large for a float          |
| `missing_field`  | either     | a required field is absent                                         |
| `unknown_field`  | either     | a field the contract does not know                                 |
| `wrong_type`     | either     | a value of the wrong type (`*_type`, `*_parsing`, `enum`, ...)      |
| `invalid_fields` | either     | any other contract violation (range, name pattern, zone, schema)   |
| `absurd_value`   | sample     | a known metric outside its physically possible range               |
| `wrong_key`      | record     | the Kafka key is not `<site>/<agent>` of the batch                 |
| `duplicate`      | sample     | seq and ts not newer than the device's last accepted sample        |
| `clock_skew`     | either     | event time too far ahead of the site's watermark (or its producer) |
| `stage_error`    | record     | the stage itself failed on the record (a bug): kept, stage goes on |

When a record or sample breaks several rules the reason is the first in `REASON_PRIORITY`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any

import orjson
from pydantic import ValidationError

from dcpulse.contract import (
    MAX_MESSAGE_BYTES,
    WATERMARK_SCHEMA,
    BatchEnvelope,
    Sample,
    TelemetryBatch,
    Watermark,
    agent_key,
)
from dcpulse.deadletter import Rejection

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

REASON_PRIORITY: tuple[str, ...] = (
    OVERSIZE, MALFORMED_JSON, NON_FINITE, MISSING_FIELD, UNKNOWN_FIELD, WRONG_TYPE,
    INVALID_FIELDS, ABSURD_VALUE, WRONG_KEY, DUPLICATE, CLOCK_SKEW, STAGE_ERROR,
)
REASONS = frozenset(REASON_PRIORITY)

# pydantic error types that mean "a value of the wrong type" besides the *_type / *_parsing ones.
_WRONG_TYPE_ERRORS = frozenset({"enum", "int_from_float"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(ts: datetime) -> int:
    """Integer milliseconds since the epoch (floor): the one representation of time in the stage."""
    return (ts - _EPOCH) // _MS


def iso_ms(ms: int) -> str:
    return (_EPOCH + ms * _MS).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A batch that is a document: its samples in order, each valid or rejected."""

    site: str
    agent: str
    samples: list[Sample | Rejection]
    items: list[Any] | None  # the samples as parsed JSON, only when some sample was rejected

    @property
    def all_valid(self) -> bool:
        return self.items is None


Parsed = ParsedBatch | Watermark | Rejection


def parse_record(raw: bytes | None, key: bytes | None, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Parsed:
    """The stateless rules, in `REASON_PRIORITY` order: size, JSON, envelope, key, then each
    sample's contract and plausibility. A watermark record parses to a `Watermark`."""
    if raw is None:
        return Rejection(MALFORMED_JSON, "empty message value (tombstone)")
    if len(raw) > max_message_bytes:
        return Rejection(OVERSIZE, f"{len(raw)} bytes > limit {max_message_bytes}")
    try:  # the fast path: the whole batch at once inside pydantic-core
        batch = TelemetryBatch.model_validate_json(raw)
    except ValidationError:
        return _parse_slowly(raw, key)
    if key != agent_key(batch.site, batch.agent).encode():
        return _wrong_key(key, batch.site, batch.agent)
    samples: list[Sample | Rejection] = list(batch.samples)
    refused = [(i, rejection) for i, s in enumerate(batch.samples) if (rejection := _metric_problem(s.metrics))]
    if not refused:
        return ParsedBatch(batch.site, batch.agent, samples, None)
    for i, rejection in refused:
        samples[i] = rejection
    return ParsedBatch(batch.site, batch.agent, samples, orjson.loads(raw)["samples"])


def _parse_slowly(raw: bytes, key: bytes | None) -> Parsed:
    """Some part of the record is bad: find out whether the record or which samples."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # NaN, Infinity or 1e400 (what a broken sensor sends) make the bytes non-JSON, but the
        # rest of the batch is good: read it leniently, and the contract rejects the one sample.
        document = _lenient_json(raw)
        if document is _NOT_JSON:
            return Rejection(MALFORMED_JSON, str(exc)[:300])
    if isinstance(document, dict) and document.get("schema") == WATERMARK_SCHEMA:
        try:
            return Watermark.model_validate(document)
        except ValidationError as exc:
            return _contract_rejection(exc)
    try:
        envelope = BatchEnvelope.model_validate(document)
    except ValidationError as exc:
        return _contract_rejection(exc)
    if key != agent_key(envelope.site, envelope.agent).encode():
        return _wrong_key(key, envelope.site, envelope.agent)
    return ParsedBatch(envelope.site, envelope.agent, [parse_sample(item) for item in envelope.samples],
                       envelope.samples)


def parse_sample(item: Any) -> Sample | Rejection:
    try:
        sample = Sample.model_validate(item)
    except ValidationError as exc:
        return _contract_rejection(exc)
    return _metric_problem(sample.metrics) or sample


def _metric_problem(metrics: dict[str, float]) -> Rejection | None:
    """A contract-valid sample's metrics that InfluxDB would mangle (reserved names) or that no
    real device reads (absurd values)."""
    if reserved := reserved_metric_names(tuple(metrics)):
        return Rejection(INVALID_FIELDS, "; ".join(f"metrics.{name}: reserved by InfluxDB (`_field`, `_measurement`, "
                                                   "`time` and every name starting with `_`)" for name in reserved))
    if absurd := absurd_values(metrics):
        return Rejection(ABSURD_VALUE, "; ".join(absurd)[:1000])
    return None


@lru_cache(maxsize=4096)
def reserved_metric_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Names InfluxDB keeps for itself as field keys (per message layout, so cached)."""
    return tuple(name for name in names if name.startswith("_") or name == "time")


def _wrong_key(key: bytes | None, site: str, agent: str) -> Rejection:
    return Rejection(WRONG_KEY, f"Kafka key {key!r} is not the batch's agent key {agent_key(site, agent)!r}")


_NOT_JSON = object()


def _lenient_json(raw: bytes) -> Any:
    """The document with NaN / Infinity literals and overflowing numbers read as non-finite
    floats, or `_NOT_JSON` if the bytes are malformed anyway."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=float)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _NOT_JSON


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
    if kind == "finite_number" or (kind == "value_error" and isinstance(value, float) and not math.isfinite(value)):
        return NON_FINITE
    return INVALID_FIELDS


def _contract_rejection(exc: ValidationError) -> Rejection:
    """The reason of the highest-priority error; the detail lists every error, that one first."""
    errors = sorted(((REASON_PRIORITY.index(_error_reason(err)), i, err) for i, err in enumerate(exc.errors())),
                    key=lambda item: item[:2])
    detail = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for _, _, err in errors)
    return Rejection(REASON_PRIORITY[errors[0][0]], detail[:1000])


# Physically possible ranges by metric-name suffix (units are in the names; docs/schema.md).
# The first matching suffix decides; a metric no suffix matches is not judged. Bounds included.
ABSURD_LIMITS: tuple[tuple[str, float, float], ...] = (
    ("energy_kwh", 0.0, 1e12),       # cumulative energy registers (a reset to 0 is fine)
    ("_c", -50.0, 150.0),            # temperatures
    ("_util", 0.0, 1.0),             # utilisation fractions
    ("_w", 0.0, 200_000.0),          # power in W (servers, accelerators, fans)
    ("_kw", 0.0, 1_000_000.0),       # power in kW (PDUs, UPSs, meters, plant)
    ("_pct", 0.0, 100.0),            # percentages
    ("flow_l_min", 0.0, 1e7),        # flows (a hyperscale plant moves ~1e5 l/min)
    ("volume_l", 0.0, 1e15),         # cumulative volumes
    ("_bar", 0.0, 1e4),              # pressures and pressure differences
)


@lru_cache(maxsize=4096)
def metric_limits(name: str) -> tuple[float, float] | None:
    """(low, high) for a metric name, or None if its name is not in the table."""
    for suffix, low, high in ABSURD_LIMITS:
        if name.endswith(suffix):
            return low, high
    return None


@lru_cache(maxsize=256)
def _layout_limits(names: tuple[str, ...]) -> tuple[tuple[Callable[[dict[str, float]], tuple[float, ...]], float, float], ...]:
    """A message layout's judged metrics grouped by range, each group read by one itemgetter:
    layouts repeat, so the suffix search runs once, and the check is min/max in C."""
    groups: dict[tuple[float, float], list[str]] = {}
    for name in names:
        if (limits := metric_limits(name)) is not None:
            groups.setdefault(limits, []).append(name)
    return tuple((_getter(group), low, high) for (low, high), group in groups.items())


def _getter(names: list[str]) -> Callable[[dict[str, float]], tuple[float, ...]]:
    get = itemgetter(*names)
    return get if len(names) > 1 else lambda metrics: (get(metrics),)


def absurd_values(metrics: dict[str, float]) -> list[str]:
    """One line per metric outside its range, in the message's order (empty: all plausible)."""
    for get, low, high in _layout_limits(tuple(metrics)):
        values = get(metrics)
        if min(values) < low or max(values) > high:
            return [f"metrics.{name}: {value!r} outside [{lim[0]:g}, {lim[1]:g}]" for name, value in metrics.items()
                    if (lim := metric_limits(name)) is not None and not lim[0] <= value <= lim[1]]
    return []
