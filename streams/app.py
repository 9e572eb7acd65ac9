"""The Faust application: one agent that validates raw telemetry and computes the windows.

Raw records (keyed by site) come in batches; each raw partition has its own `PartitionStage`
over a `PartitionState` (streams/stage.py, streams/state.py). For every batch, in this order:

1. each record is judged and folded into the windows (in memory);
2. its outputs are handed to the producer: the valid record to the valid topic (for the raw
   sink), or a dead letter; closed-window results to the PUE and utilisation topics;
3. the state buckets the batch changed are written to the changelog-backed table, once each;
4. the batch's events are acked (take_events does it when the loop comes back).

Faust commits an offset only for acked events and flushes the producer before it commits, so a
committed offset never runs ahead of its outputs and state. A worker killed in between restarts
from the last committed offset with the state of some later batch: the state's offset guard
(`already_handled`) skips what that state has already seen, and its outputs were sent before it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import faust
from faust.tables.recovery import Recovery
from faust.types import TP, EventT

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.streams.stage import PartitionStage
from dcpulse.streams.state import PartitionState
from dcpulse.streams.validation import dead_letter, producer_time_us

log = get_logger(__name__)
SRC_HEADER = "dcpulse-src"  # on valid records: "<raw topic>:<partition>" they came from
# hengqin's largest bucket is 88 KB with 64 buckets, 58 KB with the default 256 (the one holding
# its list of about 3,000 device names): a warning long before the broker's 1 MiB limit.
BUCKET_WARN_BYTES = 512 * 1024


def seek_before_resuming_streams() -> None:
    """Work around a faust-streaming 0.15 race that tables expose (cf. faust #596, #216/#217).

    After a rebalance (every worker start) an app with tables recovers them from the changelogs
    with the fetcher running, then `Recovery.on_recovery_completed` resumes the stream partitions
    and *then* seeks them to the committed offsets. Records fetched in between are delivered, then
    fetched again after the seek, and faust's read-offset and gap bookkeeping can drop one of them
    for good: here, a raw record was never processed while its offset was committed. Stopping the
    consumer flow first means nothing is fetched until the seek is done; the original method
    resumes the flow right after it. Idempotent.
    """
    if getattr(Recovery.on_recovery_completed, "dcpulse_stops_flow_first", False):
        return
    original = Recovery.on_recovery_completed

    async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await original(self, generation_id)

    on_recovery_completed.dcpulse_stops_flow_first = True  # type: ignore[attr-defined]
    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]


def app_id(settings: Settings) -> str:
    """Derived from the topic prefix: an isolated pipeline (tests, a second tenant) gets its own
    consumer group and its own table changelogs."""
    return f"{settings.topics.prefix}-streams"


class AnalyticsWorker:
    """The agent's work for each batch; one `PartitionStage` per assigned raw partition."""

    def __init__(self, app: faust.App, settings: Settings, table: Any) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.stages: dict[int, tuple[PartitionStage, PartitionState]] = {}
        self.counts: Counter[str] = Counter()
        self.send_failures: Counter[str] = Counter()
        self.in_flight: list[tuple[str, Any]] = []  # (kind, delivery future) not yet seen done
        self.src_headers: dict[int, list[tuple[str, bytes]]] = {}
        t = settings.topics
        self.topics = {"valid": t.telemetry_valid, "dead": t.deadletter, "pue": t.pue, "utilisation": t.utilisation}

    def stage(self, topic: str, partition: int) -> tuple[PartitionStage, PartitionState]:
        known = self.stages.get(partition)
        if known is None:  # first batch since (re)assignment: the table holds the recovered state
            state = PartitionState(partition, self.settings.analytics.state_buckets)
            buckets = state.load(self.table.data)
            log.info("partition state loaded", partition=partition, buckets=buckets, keys=len(state))
            stage = PartitionStage(f"{topic}:{partition}", partition, state, self.settings.validation,
                                   self.settings.analytics)
            known = self.stages[partition] = (stage, state)
            self.src_headers[partition] = [(SRC_HEADER, stage.source.encode())]
        return known

    def forget(self, tps: set[TP]) -> None:
        """Partitions revoked or (re)assigned: their state is reloaded from the table next time."""
        for tp in tps:
            if tp.topic == self.settings.topics.telemetry:
                self.stages.pop(tp.partition, None)

    async def handle_batch(self, events: Sequence[EventT]) -> None:
        self.check_deliveries()
        by_partition: dict[int, list[EventT]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        for partition, group in by_partition.items():
            stage, state = self.stage(group[0].message.topic, partition)
            for event in group:
                await self._handle(stage, event)
            for key, value in state.dirty_buckets():
                if len(value) > BUCKET_WARN_BYTES:  # Kafka refuses messages over 1 MiB by default
                    log.error("state bucket near Kafka's message size limit: raise analytics.state_buckets "
                              "(with a new topic prefix)", key=key, bytes=len(value))
                self.table.data[key] = value  # what the table would hold after `table[key] = value`
                self.table.send_changelog(partition, key, value)  # to this raw partition's changelog

    async def _handle(self, stage: PartitionStage, event: EventT) -> None:
        message = event.message
        verdict = stage.handle(message.offset, producer_time_us(message.timestamp), message.key, message.value)
        outcome = verdict.outcome
        if outcome is None:
            self.counts["redelivered"] += 1  # its outcome went out when it was first handled
            return
        if isinstance(outcome, Telemetry):
            self.counts["valid"] += 1
            await self._send("valid", message.key, message.value, self.src_headers[message.partition])
        else:
            self.counts[outcome.reason] += 1
            letter = dead_letter(outcome, stage="validate", topic=message.topic, partition=message.partition,
                                 offset=message.offset, key=message.key, value=message.value)
            await self._send("dead", message.key, letter.to_bytes())
            log.warning("record dead-lettered", reason=outcome.reason, detail=outcome.detail[:200],
                        topic=message.topic, partition=message.partition, offset=message.offset)
        self.counts["late"] += verdict.late
        self.counts["not_newer"] += verdict.not_newer
        for point in verdict.points:
            await self._send(point.measurement if point.measurement == "utilisation" else "pue",
                             message.key, point.to_bytes())
            self.counts[point.measurement] += 1

    async def _send(self, kind: str, key: bytes | None, value: bytes,
                    headers: list[tuple[str, bytes]] | None = None) -> None:
        """Straight to the producer, not through Topic.send's per-message machinery; the commit's
        producer flush still covers it. Deliveries are checked in bulk
        (`check_deliveries`), not awaited or called back per message."""
        self.in_flight.append((kind, await self.app.producer.send(self.topics[kind], key, value, None, None, headers)))

    def check_deliveries(self) -> None:
        """Count and log failed deliveries among those that completed; keep the others."""
        pending = []
        for kind, future in self.in_flight:
            if not future.done():
                pending.append((kind, future))
            elif not future.cancelled() and future.exception() is not None:
                self.send_failures[kind] += 1
                log.error("produce failed", topic=self.topics[kind], error=repr(future.exception()))
        self.in_flight = pending


def faust_app(app_id: str, settings: Settings) -> faust.App:
    """A Faust app with the client settings every dcpulse worker uses (and the benchmarks' too)."""
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=str(settings.services.state_dir / "faust"),
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # faust's web server binds all interfaces by default
        producer_acks=-1,
        producer_compression_type="zstd",
        producer_linger=0.02,  # outputs and changelog writes go out in shared batches
    )


def create_app(settings: Settings) -> faust.App:
    seek_before_resuming_streams()  # or records arriving during a rebalance can be lost
    app = faust_app(app_id(settings), settings)
    raw_topic = app.topic(settings.topics.telemetry, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
    # Co-partitioned with the raw topic: entries are only written for the partition whose records
    # changed them (streams/state.py). Values are encoded buckets (orjson).
    table = app.Table("dcpulse-state", default=None, partitions=settings.topics.telemetry_partitions,
                      key_type=str, value_type=bytes,  # keys as JSON strings, values raw
                      help="<raw partition>/<bucket> -> validation and window state of that partition")
    worker = AnalyticsWorker(app, settings, table)
    batch = settings.analytics

    # concurrency=1: with more, faust can commit past an in-flight message (faust #606).
    @app.agent(raw_topic, concurrency=1)
    async def analyse(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch.batch_max_records, within=batch.batch_max_s):
            await worker.handle_batch(events)

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[TP], **_: object) -> None:
        worker.forget(revoked)

    @app.on_partitions_assigned.connect
    async def forget_assigned(sender: faust.App, assigned: set[TP], **_: object) -> None:
        worker.forget(assigned)

    @app.timer(interval=30.0)
    async def report_counts() -> None:
        worker.check_deliveries()
        if worker.counts:
            log.info("stage counts", **dict(worker.counts), send_failures=dict(worker.send_failures))

    @app.on_before_shutdown.connect
    async def report_final_counts(sender: faust.App, **_: object) -> None:
        log.info("stage counts", final=True, **dict(worker.counts), send_failures=dict(worker.send_failures))

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the Faust worker in the foreground until SIGINT/SIGTERM."""
    run_faust_worker(create_app(settings), loglevel)


def run_faust_worker(app: faust.App, loglevel: str = "warning") -> None:
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # faust.Worker turns the root logger to DEBUG for its spinner; the libraries' debug calls on
    # every request then build records nobody prints (10 % of the worker's CPU, measured).
    for name in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()
