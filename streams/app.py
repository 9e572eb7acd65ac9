"""The Faust application: validates raw telemetry and forwards it, dead-lettering the rest."""

from __future__ import annotations

from collections import Counter

import faust

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.streams.validation import dead_letter, validate

log = get_logger(__name__)
APP_ID = "dcpulse-streams"


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        APP_ID,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=str(settings.services.state_dir / "faust"),
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # faust's web server binds all interfaces by default
        producer_acks=-1,
        producer_compression_type="zstd",
    )
    raw_codec = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    raw_topic = app.topic(settings.topics.telemetry, **raw_codec)
    valid_topic = app.topic(settings.topics.telemetry_valid, **raw_codec)
    dead_topic = app.topic(settings.topics.deadletter, **raw_codec)
    counts: Counter[str] = Counter()

    # concurrency=1: with more, faust can commit past an in-flight message (faust #606).
    @app.agent(raw_topic, concurrency=1)
    async def validate_telemetry(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            outcome = validate(message.value)
            if isinstance(outcome, Telemetry):
                await valid_topic.send(key=message.key, value=outcome.to_bytes())
                counts["valid"] += 1
                continue
            counts[outcome.reason] += 1
            letter = dead_letter(
                outcome, stage="validate", topic=message.topic, partition=message.partition,
                offset=message.offset, key=message.key, value=message.value,
            )
            await dead_topic.send(key=message.key, value=letter.to_bytes())
            log.warning("record dead-lettered", reason=outcome.reason, topic=message.topic,
                        partition=message.partition, offset=message.offset)

    @app.timer(interval=30.0)
    async def report_counts() -> None:
        if counts:
            log.info("validation counts", **dict(counts))

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the Faust worker in the foreground until SIGINT/SIGTERM."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
