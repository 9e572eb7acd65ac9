"""Synchronous line-protocol writes to InfluxDB: `write` returns only once InfluxDB acknowledged.

influxdb-client's batching WriteApi buffers without bound and reports errors only through
callbacks, and its gzip runs at level 9 (slower than InfluxDB ingests); the sink must know a
batch is durable before it commits Kafka offsets, so it posts explicit batches itself, gzip
level 1, through the client's REST call (`/api/v2/write`).
"""

from __future__ import annotations

import gzip

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService


class WriteRejected(Exception):
    """InfluxDB refused these lines for good (a 4xx): retrying the same body cannot succeed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


def is_permanent(exc: ApiException) -> bool:
    """4xx other than 401/403 (a revoked token may be fixed) and 429 (back-pressure)."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 429)


class InfluxWriter:
    def __init__(self, url: str, token: str, org: str, timeout_ms: int = 10_000) -> None:
        # 10 s is 15 times a 5,000-line write here; a timeout is retried, and bounds a stop.
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms)
        self._service = WriteService(self._client.api_client)
        self.org = org

    def write(self, bucket: str, lines: list[bytes]) -> None:
        """Write lines (ns timestamps). Raises `WriteRejected` on a permanent refusal, anything
        else (5xx, 429, 401/403, timeout, connection refused) on a failure worth retrying."""
        if not lines:
            return
        try:
            self._service.post_write(org=self.org, bucket=bucket, body=gzip.compress(b"\n".join(lines), 1),
                                     precision=WritePrecision.NS, content_encoding="gzip",
                                     content_type="text/plain; charset=utf-8")
        except ApiException as exc:
            if is_permanent(exc):
                body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body)
                raise WriteRejected(exc.status, body[:500]) from exc
            raise

    def close(self) -> None:
        self._client.close()
