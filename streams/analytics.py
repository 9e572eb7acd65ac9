"""The window agent: validated telemetry (keyed by site) -> PUE and utilisation result topics.

Open-window state lives in a changelog-backed table, co-partitioned with the valid topic, so a
restarted or rebalanced worker resumes where the changelog says. Results are keyed by site
and carry their own (measurement, tags, window start) identity: a re-sent result overwrites.
"""

from __future__ import annotations

from collections import Counter

import faust

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.streams.windows import WindowEngine

log = get_logger(__name__)
SRC_HEADER = "dcpulse-src"


def attach_windows(app: faust.App, settings: Settings) -> None:
    raw_codec = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    valid_topic = app.topic(settings.topics.telemetry_valid, **raw_codec)
    pue_topic = app.topic(settings.topics.pue, **raw_codec)
    util_topic = app.topic(settings.topics.utilisation, **raw_codec)
    state = app.Table("dcpulse-windows", default=None, partitions=settings.topics.telemetry_partitions,
                      key_type=str, value_type=None)
    counts: Counter[str] = Counter()

    @app.agent(valid_topic, concurrency=1)
    async def windows(stream: faust.StreamT) -> None:
        engine = WindowEngine(settings.analytics, state)
        async for event in stream.events():
            message = event.message
            headers = dict(message.headers or [])
            src = (headers.get(SRC_HEADER) or f"{message.topic}:{message.partition}".encode())
            record = Telemetry.from_bytes(message.value)
            late_before, redelivered_before = engine.late, engine.redelivered
            for point in engine.process(src.decode() if isinstance(src, bytes) else str(src), record):
                topic = util_topic if point.measurement == "utilisation" else pue_topic
                await topic.send(key=record.site.encode(), value=point.to_bytes())
                counts[point.measurement] += 1
            counts["late"] += engine.late - late_before
            counts["redelivered"] += engine.redelivered - redelivered_before
            counts["records"] += 1

    @app.timer(interval=30.0)
    async def report_windows() -> None:
        if counts:
            log.info("window counts", **dict(counts))
