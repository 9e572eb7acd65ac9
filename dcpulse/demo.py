"""`dcpulse demo`: one record through producer -> Kafka -> Faust -> sink -> InfluxDB and back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dcpulse.contract import DeviceKind, Telemetry, utc_now
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.query import read_device_samples


def demo_record() -> Telemetry:
    """A rack PDU sample with a device id unique to this run, at millisecond precision."""
    now = utc_now()
    return Telemetry(
        site="demo", hall="h1", row="r01", rack="r01-k01",
        device=f"pdu-demo-{uuid.uuid4().hex[:10]}", kind=DeviceKind.PDU, seq=0,
        ts=now.replace(microsecond=now.microsecond // 1000 * 1000),
        metrics={"power_kw": 42.5, "energy_kwh": 1234.5},
    )


def publish(settings: Settings, record: Telemetry) -> None:
    publisher = TelemetryPublisher(settings.kafka.bootstrap, settings.topics.telemetry)
    try:
        publisher.publish(record)
    finally:
        publisher.close()
    if publisher.failures:
        raise RuntimeError(f"publishing failed: {dict(publisher.failures)}")


def wait_for_samples(
    settings: Settings, device: str, timeout_s: float, check: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Poll InfluxDB (read-only token) until `device` has samples, or raise after timeout_s."""
    token = influx_token(settings, "read")
    start = utc_now() - timedelta(days=1)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_device_samples(settings.influx.url, token, settings.influx.org,
                                   settings.influx.buckets.raw, device, start)
        if rows:
            return rows
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sample of {device} reached InfluxDB within {timeout_s:.0f}s")
        time.sleep(0.5)


def run_one_record(settings: Settings, timeout_s: float = 120.0) -> tuple[Telemetry, dict[str, Any], float]:
    """Start the pipeline stages, publish one record, read it back. Returns (sent, read, seconds)."""
    record = demo_record()
    with running_pipeline(settings) as pipeline:
        started = time.monotonic()
        publish(settings, record)
        rows = wait_for_samples(settings, record.device, timeout_s, check=pipeline.check_alive)
        return record, rows[0], time.monotonic() - started
