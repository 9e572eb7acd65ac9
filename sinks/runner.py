"""The sink process: valid telemetry topic -> InfluxDB raw bucket, at least once.

Offsets are committed only after InfluxDB acknowledged the batch that contained them. While
InfluxDB is down the consumer is paused (memory stays bounded to one batch) and the batch is
retried with capped exponential backoff.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from datetime import timedelta

from influxdb_client import Point
from influxdb_client.rest import ApiException
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError

from dcpulse.contract import Telemetry, utc_now
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.points import telemetry_point
from dcpulse.streams.validation import Rejection, dead_letter, validate

log = get_logger(__name__)
GROUP_ID = "dcpulse-sink"
RETENTION_MARGIN = timedelta(minutes=5)  # do not race the retention boundary


def is_permanent(exc: ApiException) -> bool:
    """4xx other than 401/403 (a revoked token may be fixed) and 429 (back-pressure): retrying
    the same points cannot succeed."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 429)


def _body(exc: ApiException) -> str:
    return (exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body))[:500]


@dataclass
class SinkStats:
    written: int = 0
    batches: int = 0
    write_retries: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


class TelemetrySink:
    def __init__(self, settings: Settings, writer: InfluxWriter, batch_size: int = 5000) -> None:
        self.settings = settings
        self.writer = writer
        self.batch_size = batch_size
        self.stats = SinkStats()
        self.stopping = threading.Event()
        self.consumer = KafkaConsumer(
            settings.topics.telemetry_valid,
            bootstrap_servers=settings.kafka.bootstrap,
            group_id=GROUP_ID,
            client_id="dcpulse-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_size,
        )
        self.deadletters = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True,
        )

    def run(self) -> None:
        log.info("sink started", topic=self.settings.topics.telemetry_valid,
                 bucket=self.settings.influx.buckets.raw)
        try:
            while not self.stopping.is_set():
                self.step(timeout_ms=500)
        finally:
            self.consumer.close(autocommit=False)
            self.deadletters.close(timeout=10)
            self.writer.close()
            log.info("sink stopped", written=self.stats.written, batches=self.stats.batches)

    def step(self, timeout_ms: int) -> int:
        """Poll one batch, write it, commit it. Returns the number of records handled."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.batch_size)
        records = [record for batch in polled.values() for record in batch]
        if not records:
            return 0
        pending: list[tuple[ConsumerRecord, Point]] = []
        oldest = utc_now() - timedelta(hours=self.settings.influx.buckets.raw_retention_hours) + RETENTION_MARGIN
        for record in records:
            outcome = validate(record.value)
            if not isinstance(outcome, Telemetry):
                self._dead_letter(outcome, record)
            elif outcome.ts < oldest:
                # InfluxDB would drop it (HTTP 422): say so instead of retrying forever.
                self._dead_letter(Rejection("outside_retention", f"ts {outcome.ts.isoformat()} is older than "
                                            f"the raw bucket's retention"), record)
            else:
                pending.append((record, telemetry_point(outcome)))
        self._write_until_acknowledged(pending)
        self.deadletters.flush(timeout=30)
        try:
            self.consumer.commit()
        except CommitFailedError as exc:
            # Partitions moved to another sink during a rebalance: it will redeliver, and the
            # points are idempotent, so nothing is lost or doubled.
            log.warning("commit failed after rebalance", error=str(exc))
        self.stats.batches += 1
        return len(records)

    def _write_until_acknowledged(self, pending: list[tuple[ConsumerRecord, Point]]) -> None:
        """Write the batch; retry transient failures forever (paused); split on a rejection."""
        delay = 0.5
        bucket = self.settings.influx.buckets.raw
        while True:
            try:
                self.writer.write(bucket, [point for _, point in pending])
                self.stats.written += len(pending)
                break
            except ApiException as exc:
                if is_permanent(exc):
                    self._write_one_by_one(pending)
                    break
                failure: Exception = exc
            except Exception as exc:  # noqa: BLE001 - connection refused, timeout...: not durable yet
                failure = exc
            if self.stopping.is_set():
                raise RuntimeError("stopping with an unwritten batch; its offsets stay uncommitted")
            # Transient: back off with consumption paused (memory stays at one batch), retry.
            self.stats.write_retries += 1
            log.warning("influx write failed, pausing consumption and retrying",
                        error=str(failure)[:300], retry_in_s=delay, points=len(pending))
            if self.consumer.assignment():
                self.consumer.pause(*self.consumer.assignment())
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping.is_set():
                self._poll_paused()
            delay = min(delay * 2, 30.0)
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())
            log.info("influx writes acknowledged again, consumption resumed")

    def _write_one_by_one(self, pending: list[tuple[ConsumerRecord, Point]]) -> None:
        """InfluxDB refused the batch (4xx): find the points it refuses, dead-letter them, keep the rest."""
        bucket = self.settings.influx.buckets.raw
        for record, point in pending:
            while True:
                try:
                    self.writer.write(bucket, [point])
                    self.stats.written += 1
                    break
                except ApiException as exc:
                    if is_permanent(exc):
                        self._dead_letter(Rejection("influx_rejected", f"HTTP {exc.status}: {_body(exc)}"), record)
                        break
                    time.sleep(1.0)  # transient in the middle of the split: retry this point
                except Exception:  # noqa: BLE001
                    time.sleep(1.0)

    def _poll_paused(self) -> None:
        """Poll only to keep group membership. A partition assigned by a rebalance meanwhile is
        not paused and may return records: rewind to them so none is skipped."""
        unexpected = self.consumer.poll(timeout_ms=200)
        for partition, records in unexpected.items():
            self.consumer.seek(partition, records[0].offset)
        if self.consumer.assignment():
            self.consumer.pause(*self.consumer.assignment())

    def _dead_letter(self, rejection: Rejection, record) -> None:
        letter = dead_letter(
            rejection, stage="sink", topic=record.topic, partition=record.partition,
            offset=record.offset, key=record.key, value=record.value,
        )
        self.deadletters.send(self.settings.topics.deadletter, key=record.key, value=letter.to_bytes())
        self.stats.dead_lettered[rejection.reason] += 1

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
