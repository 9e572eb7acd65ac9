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

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.points import telemetry_point
from dcpulse.streams.validation import Rejection, dead_letter, validate

log = get_logger(__name__)
GROUP_ID = "dcpulse-sink"


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
        points = []
        for record in records:
            outcome = validate(record.value)
            if isinstance(outcome, Telemetry):
                points.append(telemetry_point(outcome))
            else:
                self._dead_letter(outcome, record)
        self._write_until_acknowledged(points)
        self.deadletters.flush(timeout=30)
        try:
            self.consumer.commit()
        except CommitFailedError as exc:
            # Partitions moved to another sink during a rebalance: it will redeliver, and the
            # points are idempotent, so nothing is lost or doubled.
            log.warning("commit failed after rebalance", error=str(exc))
        self.stats.written += len(points)
        self.stats.batches += 1
        return len(records)

    def _write_until_acknowledged(self, points: list) -> None:
        delay = 0.5
        while True:
            try:
                self.writer.write(self.settings.influx.buckets.raw, points)
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "not durable yet"
                if self.stopping.is_set():
                    raise
                self.stats.write_retries += 1
                log.warning("influx write failed, pausing consumption and retrying",
                            error=str(exc)[:300], retry_in_s=delay, points=len(points))
                if self.consumer.assignment():
                    self.consumer.pause(*self.consumer.assignment())
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self.stopping.is_set():
                    self._poll_paused()
                delay = min(delay * 2, 30.0)
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())
            log.info("influx writes acknowledged again, consumption resumed")

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
