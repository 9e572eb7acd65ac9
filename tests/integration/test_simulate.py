"""`dcpulse simulate` into a real broker, read back by independent clients (kcat, kafka-python)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from dcpulse.contract import TelemetryBatch, Watermark, agent_key, watermark_key
from dcpulse.kafka_clients import access
from dcpulse.services.kafka_acls import Grant, grant, revoke
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import kcat_config

pytestmark = pytest.mark.integration
PARTITIONS = 3
SMALL_DEVICES = 33  # 16 servers + 4 PDUs + UPS + 2 CDUs + 2 leak sensors + 2 CRAHs + 6 site plant
SMALL_AGENTS = 6  # facility, hall-h1, 4 racks


@pytest.fixture()
def fresh_topic(services: LocalServices, settings: Settings):
    name = f"test.simulate.{uuid.uuid4().hex[:8]}"
    kafka = access(settings, "admin")
    admin = KafkaAdminClient(**kafka.client_config())
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    agents_may_write = [Grant("agent", "write", "topic", name)]  # `simulate` logs in as an agent
    grant(kafka, agents_may_write)
    yield name
    revoke(kafka, agents_may_write)
    admin.delete_topics([name])
    admin.close()


def _simulate(topic: str, *args: str) -> tuple[dict[str, int], str]:
    out = subprocess.run(
        [sys.executable, "-m", "dcpulse.cli", "simulate", "--preset", "small", "--speed", "max", "--topic", topic,
         "--start", "2026-07-01T00:00:00Z", *args],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    match = re.search(r"stream sha256 ([0-9a-f]{64})\s+\(([\d,]+) messages, ([\d,]+) samples, ([\d,]+) watermarks", out)
    assert match, out
    counts = [int(match.group(i).replace(",", "")) for i in (2, 3, 4)]
    return dict(zip(("messages", "samples", "watermarks"), counts, strict=True)), match.group(1)


def _read_all(settings: Settings, topic: str) -> list:
    consumer = KafkaConsumer(**access(settings, "admin").client_config(), enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    seen = list(consumer)
    consumer.close()
    return seen


def test_simulate_small_five_minutes_is_all_in_kafka(fresh_topic: str, settings: Settings) -> None:
    counts, _ = _simulate(fresh_topic, "--duration", "5m", "--fault", "cdu_pump_failure@1m+2m",
                          "--fault", "sensor_dropout:small:h1-r01-k01-s02@1m+1m")
    assert counts == {"messages": 30 * SMALL_AGENTS, "samples": 30 * SMALL_DEVICES - 6, "watermarks": 30}
    seen = _read_all(settings, fresh_topic)
    assert len(seen) == counts["messages"] + counts["watermarks"] * PARTITIONS
    mark_key = watermark_key("small").encode()
    batches = [(m, TelemetryBatch.model_validate_json(m.value)) for m in seen if m.key != mark_key]
    assert len(batches) == counts["messages"]
    assert all(m.key == agent_key(b.site, b.agent).encode() for m, b in batches)
    assert sum(len(b.samples) for _, b in batches) == counts["samples"]
    assert Counter(b.agent for _, b in batches)["rack-h1-r01-k01"] == 30
    # Every partition holds every watermark, in tick order, each after that tick's batches there.
    by_partition: dict[int, list] = defaultdict(list)
    for message in seen:
        by_partition[message.partition].append(message)
    assert sorted(by_partition) == list(range(PARTITIONS))
    ticks = sorted({m.timestamp for m, _ in batches})
    for records in by_partition.values():
        marks = [(i, m) for i, m in enumerate(records) if m.key == mark_key]
        assert [m.timestamp for _, m in marks] == ticks
        for i, m in marks:
            mark = Watermark.model_validate_json(m.value)
            assert mark.ts.timestamp() * 1000 == m.timestamp + 9_000
            assert all(r.timestamp <= m.timestamp for r in records[:i])
            assert all(r.timestamp > m.timestamp for r in records[i + 1:] if r.key != mark_key)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (./run installs it with apt-get)")
def test_kcat_reads_what_the_simulator_published(fresh_topic: str, settings: Settings, tmp_path: Path) -> None:
    counts, _ = _simulate(fresh_topic, "--duration", "1m")
    out = subprocess.run(["kcat", "-F", str(kcat_config(settings, "admin", tmp_path)), "-b", settings.kafka.bootstrap, "-C", "-t", fresh_topic, "-e", "-q",
                          "-f", "%k\t%s\n"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == counts["messages"] + counts["watermarks"] * PARTITIONS
    batches = [TelemetryBatch.model_validate_json(value) for key, value in (line.split("\t", 1) for line in lines)
               if key != watermark_key("small")]
    assert len(batches) == counts["messages"] and {b.site for b in batches} == {"small"}


def test_same_seed_same_hash_through_the_cli(fresh_topic: str) -> None:
    first = _simulate(fresh_topic, "--duration", "1m", "--seed", "5")[1]
    assert first == _simulate(fresh_topic, "--duration", "1m", "--seed", "5")[1]
    assert first != _simulate(fresh_topic, "--duration", "1m", "--seed", "6")[1]
