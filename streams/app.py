"""The Faust application: two agents, each over checkpointed per-partition state.

- `analyse` reads the raw topic (key = agent). Per raw partition a `PartitionStage`
  (streams/stage.py) validates every sample, forwards valid batches to the valid topic (the
  original bytes, or a replacement without the rejected samples), dead-letters bad records and
  samples, evaluates the alert rules on every accepted sample (transitions to the alerts topic,
  key = alert fingerprint), folds samples into device windows and, on the site's watermarks,
  emits final rack results and one partial per site and window to the partials topic (key =
  site).
- `combine` reads the partials topic. Per partials partition a `SiteStage` (streams/combine.py)
  combines a window once every raw partition's partial is in: PUE, pPUE, efficiency, hall and
  site utilisation, roll-ups.

Both commit in the order of streams/checkpoint.py. Several `dcpulse streams` processes share
the work through the consumer group `<prefix>-streams`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from faust.tables.recovery import Recovery
from faust.types import TP, EventT
from kafka import TopicPartition

from dcpulse.contract import AnalyticsPoint
from dcpulse.kafka_clients import SASL_MECHANISM, KafkaAccess, Role, access, consumer
from dcpulse.log import RepeatLimiter, get_logger
from dcpulse.producers.sitemodel import preset_thresholds
from dcpulse.services.topics import TopicSpec, ensure_topics
from dcpulse.settings import Settings
from dcpulse.streams.alerting import AlertEvent
from dcpulse.streams.alertrules import load_rules
from dcpulse.streams.checkpoint import CheckpointedAgent, Send, run_batches
from dcpulse.streams.combine import SiteStage, decode_site_state
from dcpulse.streams.stage import Outputs, PartitionStage, decode_state

log = get_logger(__name__)


def seek_before_resuming_streams() -> None:
    """Work around a faust-streaming 0.15 race that tables expose (cf. faust #596, #216/#217).

    After a rebalance (every worker start) an app with tables recovers them from the changelogs
    with the fetcher running, then `Recovery.on_recovery_completed` resumes the stream partitions
    and *then* seeks them to the committed offsets. Records fetched in between are delivered, then
    fetched again after the seek, and faust's read-offset and gap bookkeeping can drop one of them
    for good. Stopping the consumer flow first means nothing is fetched until the seek is done;
    the original method resumes the flow right after it. Idempotent.
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
    return settings.topics.group("streams")


def producer_ms(event: EventT) -> int | None:
    """The record's Kafka timestamp (faust gives float seconds; None or negative if absent)."""
    ts = event.message.timestamp
    return None if ts is None or ts < 0 else round(ts * 1000)


def raw_partitions(settings: Settings) -> int:
    """The raw topic's partition count: how many partials the combiner waits for per window."""
    client = consumer(access(settings, "worker"), "dcpulse-streams-meta")
    try:
        found = client.partitions_for_topic(settings.topics.telemetry)
    finally:
        client.close()
    if not found:
        raise RuntimeError(f"topic {settings.topics.telemetry} does not exist: run `dcpulse topics create`")
    return len(found)


def read_partition(kafka: KafkaAccess, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes]:
    """A changelog partition's newest value per key, read from Kafka up to its current end."""
    client = consumer(kafka, "dcpulse-state-reader")
    tp = TopicPartition(topic, partition)
    found: dict[bytes, bytes] = {}
    try:
        client.assign([tp])
        client.seek_to_beginning(tp)
        end = client.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout_s
        while client.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] took over {timeout_s:.0f} s")
            for message in client.poll(timeout_ms=1000).get(tp, []):
                if message.offset >= end:
                    continue
                if message.value is None:
                    found.pop(message.key, None)
                else:
                    found[message.key] = message.value
    finally:
        client.close()
    return found


def broker_credentials(kafka: KafkaAccess) -> faust.SASLCredentials | None:
    """The worker's login as Faust (aiokafka) takes it; None on a plaintext broker."""
    if not kafka.secure:
        return None
    return faust.SASLCredentials(username=kafka.username, password=kafka.password_text(),
                                 ssl_context=kafka.ssl_context(), mechanism=SASL_MECHANISM)


def faust_app(app_id: str, settings: Settings, role: Role = "worker") -> faust.App:
    """A Faust app with the client settings every dcpulse worker uses (and the benchmarks' too),
    logged in as `role`."""
    kafka = access(settings, role)
    return faust.App(
        app_id,
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        datadir=str(settings.services.state_dir / "faust"),
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # faust's web server binds all interfaces by default
        producer_acks=-1,
        producer_compression_type="zstd",
        producer_linger=0.02,  # outputs and changelog writes go out in shared batches
        # A killed worker's partitions move after 10 s instead of 60: until the coordinator
        # expires the dead member, the whole group waits in the rebalance (heartbeats every 3 s).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )


def _raw_sends(settings: Settings):
    t = settings.topics

    def run(stage: PartitionStage, events: Sequence[EventT], counts: Counter[str]) -> list[Send]:
        out = Outputs(counts=counts)
        for event in events:
            m = event.message
            stage.handle(out, m.offset, producer_ms(event), m.key, m.value)
        sends: list[Send] = [(t.telemetry_valid, key, value) for key, value in out.valid]
        sends += [(t.deadletter, key, letter.to_bytes()) for key, letter in out.dead]
        sends += [(t.utilisation, p.tags["site"].encode(), p.to_bytes()) for p in out.results]
        sends += [(t.partials, p.site.encode(), orjson.dumps(p.to_json())) for p in out.partials]
        sends += [(t.alerts, a.fingerprint.encode(), orjson.dumps(a.to_json())) for a in out.alerts]
        return sends

    return run


def _site_sends(settings: Settings):
    t = settings.topics

    def run(stage: SiteStage, events: Sequence[EventT], counts: Counter[str]) -> list[Send]:
        points: list[AnalyticsPoint] = []
        alerts: list[AlertEvent] = []
        for event in events:
            stage.handle(points, counts, event.message.offset, event.message.value, alerts)
        sends: list[Send] = [(t.utilisation if p.measurement == "utilisation" else t.pue, p.tags["site"].encode(),
                              p.to_bytes()) for p in points]
        return sends + [(t.alerts, a.fingerprint.encode(), orjson.dumps(a.to_json())) for a in alerts]

    return run


def create_app(settings: Settings) -> faust.App:
    seek_before_resuming_streams()  # or records arriving during a rebalance can be lost
    app = faust_app(app_id(settings), settings)
    t, cfg = settings.topics, settings.analytics
    partitions = raw_partitions(settings)
    rules = load_rules(settings.alerts.rules_file) if settings.alerts.enabled else []
    raw_topic = app.topic(t.telemetry, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    partials_topic = app.topic(t.partials, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw")
    # Co-partitioned with their input topics: a partition's entries are written only while
    # processing that partition (streams/state.py). Keys and values are raw bytes (bytes types).
    raw_table = app.Table("dcpulse-state", default=None, partitions=partitions, key_type=bytes, value_type=bytes,
                          help="<raw partition>/<bucket> -> that partition's stage state")
    site_table = app.Table("dcpulse-sites", default=None, partitions=t.derived_partitions, key_type=bytes,
                           value_type=bytes, help="<partials partition>/<bucket> -> the combiner's site states")

    # Created before Faust starts: workers starting together otherwise race to create them,
    # and one that does not see a changelog in its metadata yet stalls on it.
    kafka = access(settings, "worker")
    ensure_topics(kafka, [
        TopicSpec(table.changelog_topic_name, table.partitions, 0, "a stream worker's checkpointed state", compacted=True)
        for table in (raw_table, site_table)])

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(topic, key, value, None, None, None)

    def changelog(table: Any) -> Any:
        # Straight to the producer like every output, so its delivery can be awaited (the
        # table's own send_soon goes through a buffer that stalls when awaited per message).
        async def send_changelog(partition: int, key: bytes, value: bytes) -> Any:
            return await app.producer.send(table.changelog_topic_name, key, value, partition, None, None)
        return send_changelog

    analyse_agent = CheckpointedAgent(
        "analyse", cfg.state_buckets, decode_state,
        lambda p, state: PartitionStage(t.telemetry, p, partitions, state, settings.validation, cfg, rules),
        _raw_sends(settings), send, changelog(raw_table), raw_table.data,
        lambda p: read_partition(kafka, raw_table.changelog_topic_name, p))
    combine_agent = CheckpointedAgent(
        "combine", cfg.state_buckets, decode_site_state, lambda p, state: SiteStage(p, state, cfg, rules, preset_thresholds()),
        _site_sends(settings), send, changelog(site_table), site_table.data,
        lambda p: read_partition(kafka, site_table.changelog_topic_name, p))
    agents = {t.telemetry: analyse_agent, t.partials: combine_agent}

    # concurrency=1: with more, faust can commit past an in-flight message (faust #606).
    @app.agent(raw_topic, concurrency=1)
    async def analyse(stream: faust.StreamT) -> None:
        await run_batches(analyse_agent, stream.take_events(cfg.batch_max_records, within=cfg.batch_max_s))

    @app.agent(partials_topic, concurrency=1)
    async def combine(stream: faust.StreamT) -> None:
        await run_batches(combine_agent, stream.take_events(cfg.batch_max_records, within=cfg.batch_max_s))

    def forget(tps: set[TP]) -> None:
        for topic, agent in agents.items():
            agent.forget({tp.partition for tp in tps if tp.topic == topic})

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[TP], **_: object) -> None:
        forget(revoked)

    @app.on_partitions_assigned.connect
    async def forget_assigned(sender: faust.App, assigned: set[TP], **_: object) -> None:
        forget(assigned)

    def report(final: bool) -> None:
        for agent in agents.values():
            if agent.counts or final:
                log.info("stage counts", agent=agent.name, final=final, **dict(agent.counts))

    @app.timer(interval=30.0)
    async def report_counts() -> None:
        report(False)

    @app.on_before_shutdown.connect
    async def report_final_counts(sender: faust.App, **_: object) -> None:
        report(True)

    return app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run the Faust worker in the foreground until SIGINT/SIGTERM."""
    run_faust_worker(create_app(settings), loglevel)


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        limiter = RepeatLimiter()  # a broker outage: say it once, then how often, not 800 times
        for handler in logger.handlers:
            handler.addFilter(limiter)


def run_faust_worker(app: faust.App, loglevel: str = "warning") -> None:
    worker = Worker(app, loglevel=loglevel, quiet=True)
    # faust.Worker turns the root logger to DEBUG for its spinner; the libraries' debug calls on
    # every request then build records nobody prints (10 % of the worker's CPU, measured).
    for name in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.execute_from_commandline()
