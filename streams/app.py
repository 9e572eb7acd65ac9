"""The Faust application: validation (raw -> valid or dead letter) and the window stage."""

from __future__ import annotations

import logging
from collections import Counter

import faust
from faust.tables.recovery import Recovery

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.streams.analytics import attach_windows
from dcpulse.streams.validation import (
    already_handled,
    dead_letter,
    mark_handled,
    process_record,
    producer_time_us,
)

log = get_logger(__name__)


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


def create_app(settings: Settings) -> faust.App:
    seek_before_resuming_streams()  # or records arriving during a rebalance can be lost
    app = faust.App(
        app_id(settings),
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=str(settings.services.state_dir / "faust"),
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # faust's web server binds all interfaces by default
        producer_acks=-1,
        producer_compression_type="zstd",
        # Every table write is a changelog message: without linger each one became its own
        # compressed batch and produce request (bench_windows: 1.5 messages per batch).
        producer_linger=0.02,
    )
    raw_codec = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    raw_topic = app.topic(settings.topics.telemetry, **raw_codec)
    valid_topic = app.topic(settings.topics.telemetry_valid, **raw_codec)
    dead_topic = app.topic(settings.topics.deadletter, **raw_codec)
    counts: Counter[str] = Counter()
    checks = settings.validation
    # State of the stateful rules (streams/validation.py: check_duplicate, check_clock_skew).
    # Changelog-backed and co-partitioned with the raw topic: both are only written while
    # processing a record, so each entry goes to the changelog partition of that record's raw
    # partition (a device's samples, and a partition's clock, live on one raw partition).
    table_codec = {"key_type": str, "value_type": bytes}  # keys as JSON strings, values raw (orjson)
    partition_clocks = app.Table(
        "validation-partition-clock", default=None, partitions=settings.topics.telemetry_partitions,
        help="raw partition -> [watermark us, newest Kafka timestamp us] of accepted records, and the "
        "last raw offset handled (key __partition__/<n>/offset)", **table_codec,
    )
    devices_seen = app.Table(
        "validation-device-seen", default=None, partitions=settings.topics.telemetry_partitions,
        help="site/device -> [seq, ts us] of its last accepted sample", **table_codec,
    )

    # concurrency=1: with more, faust can commit past an in-flight message (faust #606).
    @app.agent(raw_topic, concurrency=1)
    async def validate_telemetry(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            if already_handled(partition_clocks, message.partition, message.offset):
                counts["redelivered"] += 1  # its outcome went out when it was first handled
                continue
            # Loads and stores the rules' state in the tables; values are assigned back, never
            # mutated in place, so the changelog sees every change.
            outcome = process_record(
                message.value, message.partition, producer_time_us(message.timestamp),
                partition_clocks, devices_seen,
                max_clock_skew_s=checks.max_clock_skew_s, max_message_bytes=checks.max_message_bytes,
            )
            if isinstance(outcome, Telemetry):
                # Keyed by site: the window stage needs all of a site on one partition, in order;
                # dcpulse-src names the raw partition for its per-source watermarks.
                await valid_topic.send(
                    key=outcome.site.encode(), value=outcome.to_bytes(),
                    headers=[("dcpulse-src", f"{message.topic}:{message.partition}".encode())],
                )
                counts["valid"] += 1
            else:
                counts[outcome.reason] += 1
                letter = dead_letter(
                    outcome, stage="validate", topic=message.topic, partition=message.partition,
                    offset=message.offset, key=message.key, value=message.value,
                )
                await dead_topic.send(key=message.key, value=letter.to_bytes())
                log.warning("record dead-lettered", reason=outcome.reason, topic=message.topic,
                            partition=message.partition, offset=message.offset)
            mark_handled(partition_clocks, message.partition, message.offset)

    @app.timer(interval=30.0)
    async def report_counts() -> None:
        if counts:
            log.info("validation counts", **dict(counts))

    @app.on_before_shutdown.connect
    async def report_final_counts(sender: faust.App, **_: object) -> None:
        log.info("validation counts", final=True, **dict(counts))

    attach_windows(app, settings)
    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the Faust worker in the foreground until SIGINT/SIGTERM."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # faust.Worker turns the root logger to DEBUG for its spinner; the libraries' debug calls on
    # every request then build records nobody prints (10 % of the worker's CPU, measured).
    for name in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()
