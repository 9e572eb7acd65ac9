"""`dcpulse simulate` into a real broker, read back by independent clients (kcat, kafka-python)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from dcpulse.contract import Telemetry
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.streams.validation import validate

pytestmark = pytest.mark.integration


@pytest.fixture()
def fresh_topic(services: LocalServices, settings: Settings):
    name = f"test.simulate.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    admin.create_topics([NewTopic(name, 3, 1)])
    yield name
    admin.delete_topics([name])
    admin.close()


def _simulate(topic: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "dcpulse.cli", "simulate", "--preset", "small", "--speed", "max", "--topic", topic,
         "--start", "2026-07-01T00:00:00Z", *args],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    match = re.search(r"stream sha256 ([0-9a-f]{64})\s+\(([\d,]+) messages", out)
    assert match, out
    return int(match.group(2).replace(",", "")), match.group(1)


def test_simulate_small_five_minutes_is_all_in_kafka(fresh_topic: str, settings: Settings) -> None:
    count, digest = _simulate(fresh_topic, "--duration", "5m", "--fault", "cdu_pump_failure@1m+2m")
    assert count == 30 * 33  # 30 ticks x (16 servers + 4 PDUs + UPS + 2 CDUs + 2 leak + 2 CRAH + 6 site)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    partitions = [TopicPartition(fresh_topic, p) for p in range(3)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    seen = [message for message in consumer]
    consumer.close()
    assert len(seen) == count
    events = [validate(m.value) for m in seen]
    assert all(isinstance(e, Telemetry) for e in events)
    assert all(m.key == e.key.encode() for m, e in zip(seen, events, strict=True))


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (./run installs it with apt-get)")
def test_kcat_reads_what_the_simulator_published(fresh_topic: str, settings: Settings) -> None:
    count, _ = _simulate(fresh_topic, "--duration", "1m")
    out = subprocess.run(["kcat", "-b", settings.kafka.bootstrap, "-C", "-t", fresh_topic, "-e", "-q",
                          "-f", "%k\t%s\n"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == count
    key, value = lines[0].split("\t", 1)
    event = Telemetry.model_validate_json(value)
    assert key == event.key and event.site == "small"


def test_same_seed_same_hash_through_the_cli(fresh_topic: str) -> None:
    first = _simulate(fresh_topic, "--duration", "1m", "--seed", "5")[1]
    assert first == _simulate(fresh_topic, "--duration", "1m", "--seed", "5")[1]
    assert first != _simulate(fresh_topic, "--duration", "1m", "--seed", "6")[1]
