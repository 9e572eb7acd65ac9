"""Shared by the end-to-end tests: an isolated pipeline (own topics, own buckets) and reading
window results back from InfluxDB in the same key format as AnalyticsPoint.key."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from dcpulse import kafka_clients
from dcpulse.contract import point_key
from dcpulse.deadletter import Rejection
from dcpulse.kafka_clients import Role, access
from dcpulse.private_files import write_private
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.recording import record, replay_plan
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.services.onboarding import influx_token
from dcpulse.streams.alertrules import load_rules
from dcpulse.streams.offline import reference_alerts, reference_results
from dcpulse.streams.validation import ParsedBatch, parse_record

from dcpulse.sandbox import sandbox
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.query import flux_string, flux_time, read_rows, sample_count_query

T = TypeVar("T")
TAGS = ("site", "category", "window", "hall", "level", "entity")


@contextmanager
def isolated(services: LocalServices, base: Settings, name: str) -> Iterator[Settings]:
    with sandbox(base, services.credentials().admin_token, f"test-{name}") as settings:
        yield settings


def kcat_config(settings: Settings, role: Role, directory: Path) -> Path:
    """A librdkafka properties file (0600) logging kcat in as `role`: `kcat -F <it>`."""
    path = directory / f"kcat-{role}.properties"
    write_private(path, access(settings, role).librdkafka_config())
    return path


def tail_consumer(settings: Settings, topic: str) -> KafkaConsumer:
    """A group-less consumer of every partition of `topic`, positioned at its current end."""
    consumer = kafka_clients.consumer(access(settings, "admin"), "dcpulse-test-tail")
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # resolve now, before anything new is produced
    return consumer


def _query(settings: Settings, query: str) -> list[dict]:
    return read_rows(settings.influx.url, influx_token(settings, "read"), settings.influx.org, query)


def read_results(settings: Settings, start: datetime) -> dict[str, dict]:
    """Every analytics point since `start` - 1 h (roll-ups are stamped at their window start)."""
    since = start - timedelta(hours=1)
    query = (f"from(bucket: {flux_string(settings.influx.buckets.analytics)}) |> range(start: {flux_time(since)})"
             ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    out = {}
    for values in _query(settings, query):
        tags = {k: values.pop(k) for k in list(values) if k in TAGS}
        key = point_key(values.pop("_measurement"), tags, values.pop("_time"))
        out[key] = {k: v for k, v in values.items() if not k.startswith("_") and v is not None}
    return out


def count_raw_points(settings: Settings, start: datetime) -> int:
    """Distinct (device, time) samples in the raw bucket since `start`."""
    rows = _query(settings, sample_count_query(settings.influx.buckets.raw, start))
    return int(rows[0]["_value"]) if rows else 0


def wait_for_raw_points(settings: Settings, start: datetime, expected: int, check: Callable[[], None],
                        timeout_s: float = 300, quiet_s: float = 45) -> int:
    """`count_raw_points` once it reaches `expected`, or once it has not changed for `quiet_s`
    (the raw sink can still be working off a backlog when the results are all in)."""
    return _settle(lambda: count_raw_points(settings, start), lambda n: n, expected, check, timeout_s, quiet_s)


def simulate_and_record(services: LocalServices, base: Settings, tmp_path: Path, start: datetime, minutes: int,
                        faults: list[str]) -> tuple[Path, str, dict[str, dict]]:
    """Simulate the small site into an isolated raw topic and record it. Returns the recording,
    the topic it was recorded from and the offline reference (point key -> fields) of what a
    replay into the configured number of partitions sends."""
    with isolated(services, base, "source") as source:
        sim = ScenarioSimulator(build_scenario(["small"], None, faults, 7, start))
        publisher = TelemetryPublisher(access(source, "admin"), source.topics.telemetry)
        run_scenario(sim, minutes * 60.0, None, publisher.publish_raw, publisher.broadcast)
        publisher.close()
        recording = tmp_path / "small.jsonl.gz"
        stats = record(access(source, "admin"), [source.topics.telemetry], recording, idle_timeout_s=3.0)
        topic = source.topics.telemetry
        partitions = source.topics.telemetry_partitions
    assert stats.records == publisher.sent
    reference = reference_results(replay_plan(recording, partitions), partitions)
    expected = {key: dict(point.fields) for key, point in reference.items()}
    # Per closed minute: 3 PUE categories, pPUE, site efficiency, 4 racks + hall + site utilisation.
    assert len(expected) >= 11 * (minutes - 3)
    return recording, topic, expected


Transition = tuple[str, str, str, str]  # fingerprint, event time, old state, new state


def expected_transitions(recording: Path, partitions: int) -> set[Transition]:
    """The offline reference of the alert transitions a replay of the recording raises."""
    return {(e.fingerprint, e.to_json()["at"], e.transition.old, e.transition.new)
            for e in reference_alerts(replay_plan(recording, partitions), partitions, load_rules())}


def read_transitions(settings: Settings, idle_ms: int = 3000) -> set[Transition]:
    """Every alert transition on the alerts topic (a restarted worker may have sent some twice)."""
    consumer = kafka_clients.consumer(access(settings, "admin"), "dcpulse-test-transitions",
                                      consumer_timeout_ms=idle_ms)
    topic = settings.topics.alerts
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    found = set()
    for message in consumer:
        event = orjson.loads(message.value)
        found.add((event["fingerprint"], event["at"], event["old"], event["new"]))
    consumer.close()
    return found


def recorded_samples(recording: Path, partitions: int) -> int:
    """Device samples in the valid batches of a recording (what the raw bucket should hold)."""
    count = 0
    for _, _, key, value in replay_plan(recording, partitions):
        parsed = parse_record(value, key)
        if isinstance(parsed, ParsedBatch):
            count += sum(1 for s in parsed.samples if not isinstance(s, Rejection))
    return count


def wait_for_results(settings: Settings, start: datetime, expected: int, check: Callable[[], None],
                     timeout_s: float = 300, quiet_s: float = 20) -> dict[str, dict]:
    """Poll until `expected` points are in, or nothing new came for `quiet_s`; then read once more."""
    _settle(lambda: read_results(settings, start), len, expected, check, timeout_s, quiet_s)
    time.sleep(3)  # anything still in flight would show as an extra point
    return read_results(settings, start)


def _settle(read: Callable[[], T], size: Callable[[T], int], expected: int, check: Callable[[], None],
            timeout_s: float, quiet_s: float) -> T:
    """Poll `read` every 2 s until its size reaches `expected`, or it is non-empty and has not
    changed size for `quiet_s`, or `timeout_s` passed; the last value read."""
    deadline = time.monotonic() + timeout_s
    found: T | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        check()
        latest = read()
        if found is None or size(latest) != size(found):
            stable_since = time.monotonic()
        found = latest
        if size(found) >= expected or (size(found) and time.monotonic() - stable_since > quiet_s):
            break
        time.sleep(2)
    assert found is not None, "nothing read before the timeout"
    return found


def assert_equal_to_reference(found: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(set(expected) - set(found)) == [], "results missing from InfluxDB"
    assert sorted(set(found) - set(expected)) == [], "results the reference does not have"
    differing = {key: {f: (found[key].get(f), v) for f, v in fields.items() if found[key].get(f) != v}
                 for key, fields in expected.items() if found[key] != fields}
    # bit-identical: floats go through repr and back exactly. (found, expected) per field.
    assert differing == {}, (f"{len(differing)} results differ: {sorted(differing)}; "
                             f"e.g. {sorted(differing.items())[:3]}")
