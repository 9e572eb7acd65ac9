"""Kafka -> InfluxDB sinks, at least once: valid telemetry -> raw bucket, results -> analytics.

Offsets are committed only after InfluxDB acknowledged the batch that contained them. While
InfluxDB is down the consumer is paused (memory stays bounded to one batch) and the batch is
retried with capped exponential backoff. Points InfluxDB will never take (outside retention,
rejected with a 4xx) are dead-lettered with the reason, not retried forever.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from influxdb_client import Point
from influxdb_client.rest import ApiException
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError

from pydantic import ValidationError

from dcpulse.contract import AnalyticsPoint, Telemetry, utc_now
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.points import analytics_point, telemetry_point
from dcpulse.streams.validation import Rejection, dead_letter, validate

log = get_logger(__name__)
ToPoint = Callable[[ConsumerRecord], "Point | Rejection"]
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


def raw_telemetry_point(settings: Settings) -> ToPoint:
    """Valid telemetry -> raw-bucket point; a sample older than the raw retention is refused
    up front (InfluxDB would drop it with HTTP 422)."""
    horizon = timedelta(hours=settings.influx.buckets.raw_retention_hours) - RETENTION_MARGIN

    def convert(record: ConsumerRecord) -> Point | Rejection:
        outcome = validate(record.value)
        if not isinstance(outcome, Telemetry):
            return outcome
        if outcome.ts < utc_now() - horizon:
            return Rejection("outside_retention", f"ts {outcome.ts.isoformat()} is older than the raw bucket's retention")
        return telemetry_point(outcome)

    return convert


def result_point(record: ConsumerRecord) -> Point | Rejection:
    try:
        return analytics_point(AnalyticsPoint.model_validate_json(record.value or b""))
    except ValidationError as exc:
        return Rejection("invalid_fields", str(exc)[:1000])


class KafkaToInflux:
    """One consumer group, its topics, one bucket: poll a batch, write it, then commit."""

    def __init__(self, settings: Settings, writer: InfluxWriter, *, name: str, topics: list[str], bucket: str,
                 to_point: ToPoint, batch_size: int = 5000) -> None:
        self.settings = settings
        self.writer = writer
        self.name = name
        self.topics = topics
        self.bucket = bucket
        self.to_point = to_point
        self.batch_size = batch_size
        self.stats = SinkStats()
        self.stopping = threading.Event()
        self.consumer = KafkaConsumer(
            *topics,
            bootstrap_servers=settings.kafka.bootstrap,
            group_id=f"dcpulse-sink-{name}",
            client_id=f"dcpulse-sink-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_size,
        )
        self.deadletters = KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True,
        )

    def run(self) -> None:
        log.info("sink started", sink=self.name, topics=self.topics, bucket=self.bucket)
        try:
            while not self.stopping.is_set():
                self.step(timeout_ms=500)
        finally:
            self.consumer.close(autocommit=False)
            self.deadletters.close(timeout=10)
            self.writer.close()
            log.info("sink stopped", sink=self.name, written=self.stats.written, batches=self.stats.batches,
                     dead_lettered=dict(self.stats.dead_lettered))

    def step(self, timeout_ms: int) -> int:
        """Poll one batch, write it, commit it. Returns the number of records handled."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.batch_size)
        records = [record for batch in polled.values() for record in batch]
        if not records:
            return 0
        pending: list[tuple[ConsumerRecord, Point]] = []
        for record in records:
            outcome = self.to_point(record)
            if isinstance(outcome, Rejection):
                self._dead_letter(outcome, record)
            else:
                pending.append((record, outcome))
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
        bucket = self.bucket
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
        bucket = self.bucket
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



def build_sinks(settings: Settings, writer_factory: Callable[[], InfluxWriter]) -> list[KafkaToInflux]:
    """The raw sink and the analytics sink, each with its own writer and consumer group."""
    t, b = settings.topics, settings.influx.buckets
    return [
        KafkaToInflux(settings, writer_factory(), name="raw", topics=[t.telemetry_valid], bucket=b.raw,
                      to_point=raw_telemetry_point(settings)),
        KafkaToInflux(settings, writer_factory(), name="analytics", topics=[t.pue, t.utilisation],
                      bucket=b.analytics, to_point=result_point),
    ]


def run_sinks(sinks: list[KafkaToInflux]) -> None:
    """Run each sink in its own thread until SIGINT/SIGTERM; every sink flushes and closes."""
    def stop(*_: object) -> None:
        for sink in sinks:
            sink.stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    threads = [threading.Thread(target=sink.run, name=f"sink-{sink.name}") for sink in sinks]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
        if not all(thread.is_alive() for thread in threads):
            stop()  # one sink died: stop the other too, so the process exits and is restarted
