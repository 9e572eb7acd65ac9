"""Records -> InfluxDB line protocol in one pass, pure (measurements, tags, fields: docs/influx-schema.md).

The stream stage has validated what reaches the sinks, so a record is parsed once with orjson
and each sample becomes one line directly: no pydantic model, no `Point` in between. Nothing
here raises on odd input: a record or a sample that cannot become a line comes back refused,
with the reason its dead letter will carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from dcpulse.deadletter import Rejection
from dcpulse.streams.alertbook import AlertBook, Record

# Line protocol's special characters (the escapes influxdb-client's Point uses): measurements
# escape comma and space; tag keys, tag values and field keys also the equals sign; string field
# values the double quote and backslash. Control characters are spelled out so a line stays one line.
_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", **_CONTROL})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", **_CONTROL})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Per-converter caches of what repeats from batch to batch (series and tick times);
# cleared when full, so hostile input cannot grow them without bound.
_CACHE_LIMIT = 100_000
# A sample that is not what the contract says (the sink trusts the stage, yet must not crash).
_MISSHAPEN = (KeyError, TypeError, ValueError, AttributeError, OverflowError)
_TAGS = ("device", "hall", "rack", "row", "site")  # sorted by key, as InfluxDB prefers
_NUMBERS = {float, int}  # bool is neither (type(), not isinstance)
# What orjson writes for {name: number} when no name needs escaping.
_PLAIN_FIELDS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-+\","
_COLON_TO_EQUALS = bytes.maketrans(b":", b"=")


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT)


def escape_key(name: str) -> str:
    """A tag key or field key."""
    return name.translate(_KEY)


def escape_tag_value(value: str) -> str:
    escaped = value.translate(_KEY)
    # A trailing backslash would escape the separator that follows it.
    return escaped + " " if escaped.endswith("\\") else escaped


def string_field(value: str) -> str:
    return f'"{value.translate(_STRING)}"'


def timestamp_ns(iso: str) -> int:
    """An ISO 8601 time with a zone (the contract's) in integer nanoseconds since the epoch."""
    return (datetime.fromisoformat(iso) - _EPOCH) // _MICROSECOND * 1000


@dataclass(frozen=True, slots=True)
class Refused:
    """What could not become a line: a whole record (`sample_index` None) or one sample of it."""

    rejection: Rejection
    sample_index: int | None = None
    value: bytes | None = None  # the sample's JSON; None: the record's own bytes


class Lines(NamedTuple):
    """One record's lines; `sources[i]` is the sample index of `lines[i]` (None: the record)."""

    lines: list[bytes]
    sources: list[int | None]
    refused: list[Refused]


Convert = Callable[[bytes], Lines]  # a record's value -> its lines


def _misshapen(exc: Exception, what: str) -> Rejection:
    return Rejection("invalid_fields", f"{what}: {type(exc).__name__}: {exc}"[:1000])


def _record_refused(rejection: Rejection) -> Lines:
    return Lines([], [], [Refused(rejection)])


def sample_json(value: bytes, index: int | None) -> bytes:
    """The bytes a dead letter keeps for line `index` of a record (the record itself for None)."""
    return value if index is None else orjson.dumps(orjson.loads(value)["samples"][index])


class TelemetryLines:
    """A `dcpulse.telemetry/2` batch -> one raw-bucket line per sample.

    measurement = device kind; tags device, hall, rack, row, site (absent levels untagged); a
    float field per metric plus the integer `seq`; time = the sample's event time in ns. A
    device's (series, time) is its identity, so a redelivered sample overwrites itself. A
    sample older than `retention` (InfluxDB would drop it with HTTP 422) is refused
    `outside_retention` alone; its siblings are kept.
    """

    def __init__(self, retention: timedelta, clock: Callable[[], int]) -> None:
        self.retention_ns = retention // _MICROSECOND * 1000
        self.clock = clock  # time.time_ns in the sink, fixed in tests
        self._series: dict[tuple[Any, ...], bytes] = {}
        self._times: dict[str, int] = {}

    def __call__(self, value: bytes) -> Lines:
        try:
            batch = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return _record_refused(Rejection("malformed_json", str(exc)[:1000]))
        site, samples = (batch.get("site"), batch.get("samples")) if isinstance(batch, dict) else (None, None)
        if not isinstance(site, str) or not isinstance(samples, list):
            return _record_refused(Rejection("invalid_fields", "not a telemetry batch (site and samples[])"))
        for cache in (self._series, self._times):
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
        oldest_ns = self.clock() - self.retention_ns
        lines: list[bytes] = []
        sources: list[int | None] = []
        refused: list[Refused] = []
        for index, sample in enumerate(samples):
            try:
                ns = self._time(sample["ts"])
                if ns < oldest_ns:
                    refused.append(Refused(Rejection("outside_retention", f"ts {sample['ts']} is older than the "
                                                     "raw bucket's retention"), index, orjson.dumps(sample)))
                    continue
                seq = sample["seq"]
                if type(seq) is not int:
                    raise TypeError(f"seq {seq!r} is not an integer")
                lines.append(b"%s %s,seq=%di %d" % (self._series_of(site, sample), fields(sample["metrics"]), seq, ns))
                sources.append(index)
            except _MISSHAPEN as exc:
                refused.append(Refused(_misshapen(exc, "sample"), index, orjson.dumps(sample)))
        return Lines(lines, sources, refused)

    def _time(self, iso: str) -> int:
        ns = self._times.get(iso)
        if ns is None:  # one tick's samples share their time: parse it once
            ns = self._times[iso] = timestamp_ns(iso)
        return ns

    def _series_of(self, site: str, sample: dict[str, Any]) -> bytes:
        kind, device = sample["kind"], sample["device"]
        identity = (site, kind, device, sample.get("hall"), sample.get("rack"), sample.get("row"))
        series = self._series.get(identity)
        if series is None:
            tags = zip(_TAGS, (device, *identity[3:], site), strict=True)
            tag_set = "".join(f",{key}={escape_tag_value(tag)}" for key, tag in tags if tag)
            series = self._series[identity] = f"{escape_measurement(kind)}{tag_set}".encode()
        return series


def fields(metrics: dict[str, Any]) -> bytes:
    """A float field per metric: `name=value,...`.

    Fast path (names of the contract's alphabet without `:`, values numbers): orjson's own
    serialisation already is the field set once its quotes go and each `:` becomes `=`.
    Anything else is escaped field by field.
    """
    if not metrics or not _NUMBERS.issuperset(map(type, metrics.values())):
        raise TypeError("metrics must be a non-empty map of numbers")
    inner = orjson.dumps(metrics)[1:-1]
    if not inner.translate(None, _PLAIN_FIELDS) and inner.count(b":") == len(metrics):
        return inner.translate(_COLON_TO_EQUALS, b'"')
    return ",".join(f"{escape_key(name)}={float(number)!r}" for name, number in metrics.items()).encode()


def analytics_lines(value: bytes) -> Lines:
    """An `AnalyticsPoint` (dcpulse.analytics/1) -> its one line: measurement, tags and fields as
    computed (strings quoted, null fields left out), time = window start in ns."""
    try:
        point = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return _record_refused(Rejection("malformed_json", str(exc)[:1000]))
    try:
        tags = "".join(f",{escape_key(key)}={escape_tag_value(tag)}"
                       for key, tag in sorted(point["tags"].items()) if tag)
        fields = ",".join(f"{escape_key(name)}={string_field(field) if isinstance(field, str) else repr(float(field))}"
                          for name, field in point["fields"].items() if field is not None)
        if not fields:
            raise ValueError("no field has a value")
        line = f"{escape_measurement(point['measurement'])}{tags} {fields} {timestamp_ns(point['time'])}"
    except _MISSHAPEN as exc:
        return _record_refused(_misshapen(exc, "not an analytics point"))
    return Lines([line.encode()], [None], [])


class AlertLines:
    """Alert transitions (dcpulse.alert/1) through the alert book (streams/alertbook.py) ->
    `alert` lines: every label but `flapping` a tag, plus `fingerprint` and `cause`; fields
    `state`, `old`, `value`, `resolved`, `flapping`, `inhibited_by` (the suppressing alerts'
    fingerprints, comma-separated, empty when none) and the summary; time = the transition's
    event time in ns (docs/influx-schema.md). `on_records` sees every record (the notifier)."""

    def __init__(self, book: AlertBook, on_records: Callable[[list[Record]], None] = lambda _: None) -> None:
        self.book = book
        self.on_records = on_records

    def __call__(self, value: bytes) -> Lines:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return _record_refused(Rejection("malformed_json", str(exc)[:1000]))
        try:
            records = self.book.apply(event)
            lines = [alert_line(record) for record in records]
        except _MISSHAPEN as exc:
            return _record_refused(_misshapen(exc, "not an alert transition"))
        self.on_records(records)
        return Lines(lines, [None] * len(lines), [])


def alert_line(record: Record) -> bytes:
    labels = {k: v for k, v in record["labels"].items() if k != "flapping"}
    labels.update(fingerprint=record["fingerprint"], cause=record["cause"])
    tags = "".join(f",{escape_key(key)}={escape_tag_value(tag)}" for key, tag in sorted(labels.items()) if tag)
    fields = [f"state={string_field(record['new'])}", f"old={string_field(record['old'])}",
              f"value={float(record['value'])!r}", f"resolved={'true' if record['resolved'] else 'false'}",
              f"flapping={'true' if record['flapping'] else 'false'}",
              f"inhibited_by={string_field(','.join(record['inhibited_by']))}"]
    if summary := record.get("annotations", {}).get("summary"):
        fields.append(f"summary={string_field(summary)}")
    return f"alert{tags} {','.join(fields)} {timestamp_ns(record['at'])}".encode()
