"""Synchronous batch writes to InfluxDB: a write returns only once InfluxDB acknowledged it.

influxdb-client's batching WriteApi buffers without bound and reports errors only through
callbacks; the sink must know a batch is durable before it commits Kafka offsets, so it writes
explicit batches synchronously.
"""

from __future__ import annotations

from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS


class InfluxWriter:
    def __init__(self, url: str, token: str, org: str, timeout_ms: int = 30_000) -> None:
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms, enable_gzip=True)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self.org = org

    def write(self, bucket: str, points: list[Point]) -> None:
        """Raises on any failure (HTTP error, timeout, connection refused)."""
        if points:
            self._write.write(bucket=bucket, org=self.org, record=points)

    def close(self) -> None:
        self._write.close()
        self._client.close()
