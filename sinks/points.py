"""Pure mapping from events to InfluxDB points (documented in docs/architecture.md)."""

from __future__ import annotations

from influxdb_client import Point, WritePrecision

from dcpulse.contract import AnalyticsPoint, Telemetry


def telemetry_point(event: Telemetry) -> Point:
    """measurement = device kind; tags = location + device; fields = metrics + seq.

    Same device and timestamp -> same series and time, so a redelivered sample overwrites
    itself instead of duplicating.
    """
    point = Point(event.kind.value).tag("site", event.site).tag("device", event.device)
    for tag in ("hall", "row", "rack"):
        value = getattr(event, tag)
        if value is not None:
            point = point.tag(tag, value)
    for name, value in event.metrics.items():
        point = point.field(name, float(value))
    return point.field("seq", event.seq).time(event.ts, WritePrecision.NS)


def analytics_point(result: AnalyticsPoint) -> Point:
    """measurement, tags and fields as computed; time = window start (second precision)."""
    point = Point(result.measurement)
    for tag, value in sorted(result.tags.items()):
        point = point.tag(tag, value)
    for name, value in sorted(result.fields.items()):
        point = point.field(name, value)
    return point.time(result.time, WritePrecision.S)
