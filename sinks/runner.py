"""`dcpulse sink`: valid telemetry -> raw bucket, window results -> analytics bucket, alert
transitions -> alerts bucket.

Each sink is one consumer group (named through `settings.topics.group`, so a sandbox never
joins the main pipeline's groups) in its own thread; SIGINT/SIGTERM stops both, and each leaves
its group on the way out so a restarted sink takes its partitions over at once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from dcpulse import kafka_clients
from dcpulse.log import get_logger
from dcpulse.settings import Settings
from dcpulse.sinks.alertlog import rebuild
from dcpulse.sinks.alertmanager import AlertmanagerClient
from dcpulse.sinks.deadletters import DeadLetters
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.notifier import Notifier
from dcpulse.sinks.points import AlertLines, Convert, TelemetryLines, analytics_lines
from dcpulse.sinks.sink import Sink
from dcpulse.streams.alertbook import AlertBook
from dcpulse.streams.alertrules import inhibitions, load_rules

log = get_logger(__name__)
RETENTION_MARGIN = timedelta(minutes=5)  # do not race the retention boundary
BATCH_LINES = 5000  # InfluxDB's recommended write batch
# Fetch enough per poll to fill a batch: 5,000 lines of raw telemetry are about 3 MB of JSON.
CONSUMER_CONFIG: dict[str, int] = {
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_bytes": 32 * 1024 * 1024,
    "fetch_min_bytes": 256 * 1024,
    "fetch_max_wait_ms": 100,
}


def kafka_sink(settings: Settings, writer: InfluxWriter, *, name: str, topics: list[str], bucket: str,
               convert: Convert) -> Sink:
    """A sink reading `topics` in the consumer group `settings.topics.group(f"sink-{name}")`."""
    kafka, client_id = kafka_clients.access(settings, "sink"), f"{settings.topics.prefix}-sink-{name}"
    session_ms = round(settings.sink.session_timeout_s * 1000)
    # A static member (KIP-345): a restarted sink rejoins as itself and gets its partitions back at
    # once, where a new member waits for the killed one's session to expire (45 s by default).
    # Static members never leave a group, so a sink stopped for good hands its partitions to the
    # others after the session timeout.
    consumer = kafka_clients.consumer(kafka, client_id, *topics, group_id=settings.topics.group(f"sink-{name}"),
                                      group_instance_id=f"{client_id}-{settings.sink.instance}",
                                      session_timeout_ms=session_ms, heartbeat_interval_ms=min(3000, session_ms // 3),
                                      **CONSUMER_CONFIG)
    # A dead-letter send waits at most 10 s for metadata, so a stop is never held up for long.
    dead_letters = DeadLetters(lambda: kafka_clients.producer(kafka, client_id, max_block_ms=10_000),
                               settings.topics.deadletter)
    return Sink(name, consumer, writer, bucket, convert, dead_letters, batch_lines=BATCH_LINES)


def raw_lines(settings: Settings) -> TelemetryLines:
    """Raw-bucket lines; samples older than the bucket's retention (less a margin) refused."""
    return TelemetryLines(timedelta(hours=settings.influx.buckets.raw_retention_hours) - RETENTION_MARGIN,
                          time.time_ns)


def alerts_sink(settings: Settings, writer: InfluxWriter, notifier: Notifier | None) -> Sink:
    """The alert log: transitions through the alert book (inhibition) into the alerts bucket and
    to the notifier; the book rebuilt first from what the sink's group has committed."""
    book = AlertBook(inhibitions(load_rules(settings.alerts.rules_file)))
    sink = kafka_sink(settings, writer, name="alerts", topics=[settings.topics.alerts],
                      bucket=settings.influx.buckets.alerts,
                      convert=AlertLines(book, notifier.take if notifier is not None else lambda _: None))
    replayed = rebuild(kafka_clients.access(settings, "sink"), f"{settings.topics.prefix}-alert-book", sink.consumer,
                       settings.topics.alerts, book)
    if notifier is not None and book.active:
        notifier.take(list(book.active.values()))
    log.info("alert book rebuilt", transitions=replayed, active=len(book.active))
    return sink


def build_notifier(settings: Settings) -> Notifier | None:
    am = settings.alertmanager
    return Notifier(AlertmanagerClient(am.url), am, settings.topics.prefix) if am.enabled else None


def build_sinks(settings: Settings, writer_factory: Callable[[], InfluxWriter],
                notifier: Notifier | None = None) -> list[Sink]:
    """The raw, analytics and alerts sinks, each with its own writer and consumer group."""
    t, b = settings.topics, settings.influx.buckets
    return [
        kafka_sink(settings, writer_factory(), name="raw", topics=[t.telemetry_valid], bucket=b.raw,
                   convert=raw_lines(settings)),
        kafka_sink(settings, writer_factory(), name="analytics", topics=[t.pue, t.utilisation],
                   bucket=b.analytics, convert=analytics_lines),
        alerts_sink(settings, writer_factory(), notifier),
    ]


def run_sinks(sinks: list[Sink], notifier: Notifier | None = None) -> None:
    """Run each sink (and the notifier) in its own thread until SIGINT/SIGTERM, or until one of
    them dies (then the others stop too, so the process exits and can be restarted)."""
    notifying = threading.Event()

    def stop(*_: object) -> None:
        for sink in sinks:
            sink.stopping.set()
        notifying.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    threads = [threading.Thread(target=sink.run, name=f"sink-{sink.name}") for sink in sinks]
    if notifier is not None:
        threads.append(threading.Thread(target=notifier.run, args=(notifying,), name="notifier"))
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
        if not all(thread.is_alive() for thread in threads):
            stop()
