"""One consumer group -> one bucket: fill a batch of lines, make it durable, then commit.

A batch is committed in this order (as Quix Streams' checkpoint orders it):
1. InfluxDB acknowledged its lines. A refused batch (4xx) is bisected: the lines InfluxDB
   refuses are dead-lettered `influx_rejected`, the rest are written;
2. Kafka confirmed every dead letter sent so far (each send's result, not just a flush);
3. only then are its offsets committed.
A step that fails is retried with capped backoff, consumption paused meanwhile, so a send that
failed is never just a count while the offsets move on. Stopping mid-way leaves the offsets
uncommitted: the partitions' next owner redelivers, and a redelivered point overwrites itself.

One write is in flight while the next batch is polled and converted: converting is this
process's Python, writing mostly InfluxDB's time on another core, so the two overlap. Memory
stays at two batches, also while InfluxDB is down.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from dcpulse.deadletter import Rejection
from dcpulse.log import get_logger
from dcpulse.sinks.deadletters import DeadLetters
from dcpulse.sinks.influx import InfluxWriter, WriteRejected
from dcpulse.sinks.points import Convert, Lines, Refused, sample_json
from dcpulse.sinks.retry import Interrupted, Retry

log = get_logger(__name__)
REPORT_EVERY_S = 30.0
KAFKA_TIMEOUT_MS = 10_000  # a commit or a group leave never blocks a stop for longer while Kafka is down


@dataclass
class Batch:
    lines: list[bytes] = field(default_factory=list)
    # Per record that gave lines, in line order: the record and each line's sample index.
    sources: list[tuple[ConsumerRecord, list[int | None]]] = field(default_factory=list)
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)
    records: int = 0

    def source(self, line: int) -> tuple[ConsumerRecord, int | None]:
        """The record and sample index of `lines[line]`."""
        for record, indexes in self.sources:
            if line < len(indexes):
                return record, indexes[line]
            line -= len(indexes)
        raise IndexError(line)


@dataclass
class SinkStats:
    records: int = 0
    written: int = 0  # lines acknowledged by InfluxDB
    batches: int = 0  # committed


class Sink:
    def __init__(self, name: str, consumer: KafkaConsumer, writer: InfluxWriter, bucket: str, convert: Convert,
                 dead_letters: DeadLetters, *, batch_lines: int = 5000, batch_max_s: float = 0.5) -> None:
        self.name = name
        self.consumer = consumer
        self.writer = writer
        self.bucket = bucket
        self.convert = convert
        self.dead_letters = dead_letters
        self.batch_lines = batch_lines  # InfluxDB's recommended batch
        self.batch_max_s = batch_max_s  # bounds the latency a slow stream adds
        self.stats = SinkStats()
        self.stopping = threading.Event()
        self.retry = Retry(self.stopping, self._idle, sink=name)
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{name}-write")
        self._in_flight: tuple[Batch, Future[None]] | None = None
        # How many records to poll for the lines a batch still misses; until records tell, ask for 100.
        self._lines_per_record = batch_lines / 100
        self._next_report = time.monotonic() + REPORT_EVERY_S

    def run(self) -> None:
        """Until `stopping` is set; then the batch in flight is finished if InfluxDB takes it at
        once, and the consumer closes (a static member stays in its group: a sink restarted with
        the same `sink.instance` takes its partitions back at once)."""
        log.info("sink started", sink=self.name, bucket=self.bucket)
        try:
            while not self.stopping.is_set():
                self.step()
            self._finish()
        except Interrupted as exc:
            log.warning("sink stopped with a batch not durable; its offsets stay uncommitted",
                        sink=self.name, reason=str(exc)[:300])
        finally:
            self._writes.shutdown(wait=True)
            self.consumer.close(autocommit=False, timeout_ms=KAFKA_TIMEOUT_MS)
            self.dead_letters.close()
            self.writer.close()
            log.info("sink stopped", **self.counts())

    def step(self) -> int:
        """Fill the next batch (the previous one's write in flight), finish the previous one,
        start writing the next. Returns the records in the new batch."""
        batch = self._fill()
        self._finish()
        if batch.records:
            self._in_flight = batch, self._writes.submit(self.writer.write, self.bucket, batch.lines)
        if time.monotonic() >= self._next_report:
            self._next_report += REPORT_EVERY_S
            log.info("sink counts", **self.counts())
        return batch.records

    def counts(self) -> dict[str, object]:
        return {"sink": self.name, "records": self.stats.records, "written": self.stats.written,
                "batches": self.stats.batches, "retries": self.retry.retries,
                "dead_lettered": dict(self.dead_letters.counts)}

    def _fill(self) -> Batch:
        """Poll and convert until `batch_lines` lines or `batch_max_s`; what a record cannot
        give is dead-lettered on the way."""
        batch = Batch()
        deadline = time.monotonic() + self.batch_max_s
        while len(batch.lines) < self.batch_lines and not self.stopping.is_set():
            timeout_ms = int((deadline - time.monotonic()) * 1000)
            if timeout_ms <= 0:
                break
            wanted = max(1, round((self.batch_lines - len(batch.lines)) / self._lines_per_record))
            for partition, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=wanted).items():
                for record in records:
                    self._add(batch, record)
                batch.offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                batch.records += len(records)
            if batch.lines:
                self._lines_per_record = len(batch.lines) / batch.records
        return batch

    def _add(self, batch: Batch, record: ConsumerRecord) -> None:
        try:
            converted = self.convert(record.value or b"")
        except Exception as exc:  # noqa: BLE001 - a converter bug must not stop the sink on one record for ever
            converted = Lines([], [], [Refused(Rejection("sink_error", repr(exc)[:1000]))])
        for refused in converted.refused:
            self.dead_letters.send(refused.rejection, record, refused.sample_index, refused.value)
        if converted.lines:
            batch.lines += converted.lines
            batch.sources.append((record, converted.sources))

    def _finish(self) -> None:
        """Steps 1-3 above for the batch in flight."""
        if self._in_flight is None:
            return
        batch, write = self._in_flight
        self._in_flight = None
        everything = (0, len(batch.lines))
        try:
            write.result()
            self.stats.written += len(batch.lines)
        except WriteRejected as exc:
            self._write(batch, self._split(batch, everything, exc))
        except Exception as exc:  # noqa: BLE001 - not durable yet: written again, with backoff
            log.warning("influx write failed, retrying", sink=self.name, error=str(exc)[:300])
            self._write(batch, [everything])
        self.retry(self.dead_letters.confirm, "dead-letter send")
        try:
            self.retry(partial(self.consumer.commit, batch.offsets, timeout_ms=KAFKA_TIMEOUT_MS), "offset commit",
                       permanent=(CommitFailedError,))
        except CommitFailedError as exc:
            # Partitions moved during a rebalance: their new owner redelivers; points are idempotent.
            log.warning("commit refused after a rebalance", sink=self.name, error=str(exc)[:300])
        self.stats.records += batch.records
        self.stats.batches += 1
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())

    def _write(self, batch: Batch, spans: list[tuple[int, int]]) -> None:
        """Write each span of lines until InfluxDB acknowledges it (same backoff and stop as any
        retry); a span it refuses is split until the refused lines stand alone."""
        while spans:
            start, end = spans.pop()
            try:
                self.retry(partial(self.writer.write, self.bucket, batch.lines[start:end]), "influx write",
                           permanent=(WriteRejected,))
                self.stats.written += end - start
            except WriteRejected as exc:
                spans += self._split(batch, (start, end), exc)

    def _split(self, batch: Batch, span: tuple[int, int], refusal: WriteRejected) -> list[tuple[int, int]]:
        """A refused span's halves (first half popped first), or, for one line, its dead letter."""
        start, end = span
        if end - start > 1:
            middle = (start + end) // 2
            return [(middle, end), (start, middle)]
        record, index = batch.source(start)
        self.dead_letters.send(Rejection("influx_rejected", str(refusal)), record, index, sample_json(record.value, index))
        return []

    def _idle(self, seconds: float) -> None:
        """Wait with consumption paused, polling only to keep the group membership. A partition
        assigned by a rebalance meanwhile is not paused and may return records: rewind to them
        so none is skipped."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            self.consumer.pause(*self.consumer.assignment())
            for partition, records in self.consumer.poll(timeout_ms=min(left_ms, 200)).items():
                self.consumer.seek(partition, records[0].offset)
