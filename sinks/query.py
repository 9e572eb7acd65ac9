"""Read results back from InfluxDB with Flux, using the read-only token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from influxdb_client import InfluxDBClient


def flux_string(value: str) -> str:
    """A Flux string literal. InfluxDB OSS has no query parameters (`params` is Cloud-only),
    so every value spliced into a query goes through here."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def flux_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def device_samples_query(bucket: str, device: str, start: datetime) -> str:
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {flux_time(start)})\n"
        f"  |> filter(fn: (r) => r.device == {flux_string(device)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    )


def sample_count_query(bucket: str, start: datetime) -> str:
    """Distinct (series, time) telemetry samples since `start`: every sample has one `seq` field."""
    return (f"from(bucket: {flux_string(bucket)}) |> range(start: {flux_time(start)})"
            ' |> filter(fn: (r) => r._field == "seq") |> group() |> count()')


def measurement_query(bucket: str, measurement: str, site: str, start: datetime) -> str:
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {flux_time(start)})\n"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and r.site == {flux_string(site)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    )


def alert_log_query(bucket: str, start: datetime, site: str | None = None, rack: str | None = None,
                    rule: str | None = None) -> str:
    """The alert log's records since `start`, optionally of one site, rack or rule."""
    where = ['r._measurement == "alert"'] + [f"r.{tag} == {flux_string(value)}" for tag, value in
                                             (("site", site), ("rack", rack), ("alertname", rule)) if value]
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {flux_time(start)}, stop: 2262-01-01T00:00:00Z)\n"  # replays may run ahead of now
        f"  |> filter(fn: (r) => {' and '.join(where)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    )


def read_rows(url: str, token: str, org: str, query: str) -> list[dict[str, Any]]:
    """Run a Flux query; one dict per row (tags and pivoted fields), sorted by time (rows of an
    aggregate without `_time` keep their order)."""
    with InfluxDBClient(url=url, token=token, org=org, timeout=30_000) as client:
        tables = client.query_api().query(query, org=org)
    rows = []
    for table in tables:
        for record in table.records:
            rows.append({k: v for k, v in record.values.items()
                         if k not in ("result", "table", "_start", "_stop")})
    return sorted(rows, key=lambda row: row["_time"]) if rows and "_time" in rows[0] else rows


def read_device_samples(
    url: str, token: str, org: str, bucket: str, device: str, start: datetime
) -> list[dict[str, Any]]:
    """Every sample of `device` since `start`, one dict per timestamp (tags and fields)."""
    return read_rows(url, token, org, device_samples_query(bucket, device, start))
