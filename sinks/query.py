"""Read results back from InfluxDB with Flux, using the read-only token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from influxdb_client import InfluxDBClient

TELEMETRY_BY_DEVICE = """
from(bucket: params.bucket)
  |> range(start: params.start)
  |> filter(fn: (r) => r.device == params.device)
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
"""


def read_device_samples(
    url: str, token: str, org: str, bucket: str, device: str, start: datetime
) -> list[dict[str, Any]]:
    """Every sample of `device` since `start`, one dict per timestamp (tags and fields)."""
    with InfluxDBClient(url=url, token=token, org=org, timeout=30_000) as client:
        tables = client.query_api().query(
            TELEMETRY_BY_DEVICE, org=org,
            params={"bucket": bucket, "device": device, "start": start},
        )
    rows = []
    for table in tables:
        for record in table.records:
            rows.append({k: v for k, v in record.values.items()
                         if k not in ("result", "table", "_start", "_stop")})
    return sorted(rows, key=lambda row: row["_time"])
