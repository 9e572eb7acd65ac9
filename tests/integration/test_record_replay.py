"""Record a topic to a file and replay it into another topic, on the real broker: any records,
simulated v2 telemetry (watermarks once per partition, whatever the partition count) and v1
recordings (converted), each replay exactly its `replay_plan`."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from dcpulse.cli import main
from dcpulse.contract import TELEMETRY_V1_SCHEMA, TelemetryBatch, Watermark
from dcpulse.kafka_clients import access
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.recording import (
    RecordedMessage,
    iter_recording,
    read_header,
    record,
    replay,
    replay_plan,
    write_recording,
)
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 3
KEYS = [f"site-{i % 3}/dev-{i}".encode() for i in range(10)]
BINARY_VALUE = b"\xff\xfe\x00\x80\xc3\x28 not utf-8 \x9f"

Row = tuple[bytes | None, bytes | None, int, tuple[tuple[str, bytes], ...]]


@pytest.fixture(scope="module")
def topics(services: LocalServices, settings: Settings) -> Iterator[dict[str, str]]:
    """Fresh source, destination and paced-replay topics, deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    roles = ("source", "dest", "paced", "spread-src", "spread-dst", "live", "cli-src", "cli-dst", "snappy")
    names = {role: f"dcpulse-test.{role}.{suffix}" for role in roles}
    admin = KafkaAdminClient(**access(settings, "admin").client_config(), client_id="dcpulse-test")
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)
                         for name in names.values()])
    try:
        yield names
    finally:
        admin.delete_topics(list(names.values()))
        admin.close()


@pytest.fixture()
def make_topic(services: LocalServices, settings: Settings) -> Iterator[Callable[[str, int], str]]:
    """Fresh topics with a chosen partition count, deleted afterwards."""
    admin = KafkaAdminClient(**access(settings, "admin").client_config(), client_id="dcpulse-test")
    made: list[str] = []

    def make(role: str, partitions: int) -> str:
        name = f"dcpulse-test.{role}.{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        made.append(name)
        return name

    try:
        yield make
    finally:
        admin.delete_topics(made)
        admin.close()


def _produce(settings: Settings, topic: str, rows: list[Row], compression: str | None = None) -> None:
    producer = KafkaProducer(**access(settings, "admin").client_config(), acks="all",
                             enable_idempotence=True, compression_type=compression)
    futures = [producer.send(topic, key=key, value=value, timestamp_ms=ts, headers=list(headers))
               for key, value, ts, headers in rows]
    producer.flush(timeout=30)
    producer.close()
    for future in futures:
        future.get(timeout=1)  # raises if any record was not delivered


def _consume_all(settings: Settings, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every record of `topic`, partition by partition in offset order, from a group-less consumer."""
    consumer = KafkaConsumer(**access(settings, "admin").client_config(), group_id=None,
                             enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            got.extend(batch)
    # A little longer, to catch records that should not be there.
    for batch in consumer.poll(timeout_ms=1000).values():
        got.extend(batch)
    consumer.close(autocommit=False)
    return got


def _source_rows() -> list[Row]:
    base = int(time.time() * 1000) - 120_000  # recent: well inside the broker's retention
    rows: list[Row] = []
    for i in range(300):
        key = KEYS[i % len(KEYS)]
        value = b'{"seq": %d, "key": "%s"}' % (i, key)
        headers: tuple[tuple[str, bytes], ...] = ()
        if i % 3 == 0:
            headers = (("seq", str(i).encode()), ("raw", b"\x00\xff\x01"))
        rows.append((key, value, base + i * 37, headers))
    rows[150] = (rows[150][0], BINARY_VALUE, rows[150][2], (("why", b"malformed on purpose"),))
    rows[299] = (rows[299][0], None, rows[299][2], ())  # a tombstone
    return rows


def _row(message) -> Row:
    return (message.key, message.value, message.timestamp,
            tuple((k, v) for k, v in (message.headers or [])))


def test_record_then_replay_at_max_speed_reproduces_every_record(
    topics: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    rows = _source_rows()
    _produce(settings, topics["source"], rows)
    path = tmp_path / "source.jsonl.gz"
    counts: list[int] = []

    stats = record(access(settings, "admin"), [topics["source"]], path, from_beginning=True,
                   idle_timeout_s=5.0, progress=lambda n, _s: counts.append(n))
    assert stats.records == len(rows)
    assert stats.per_topic == {topics["source"]: len(rows)}
    assert stats.stopped_by == "idle"
    assert counts and counts[-1] == len(rows)
    assert read_header(path).topics == (topics["source"],)
    recorded = list(iter_recording(path))
    assert sorted((m.key, m.value, m.timestamp_ms, m.headers) for m in recorded
                  if m.value is not None) == sorted(r for r in rows if r[1] is not None)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for m in recorded:
        by_partition[m.partition].append(m.offset)
    assert len(by_partition) == PARTITIONS  # the keys spread over every partition
    assert all(offsets == sorted(offsets) for offsets in by_partition.values())

    result = replay(access(settings, "admin"), path, speed=None,
                    topic_map={topics["source"]: topics["dest"]})
    assert result.total == len(rows)
    assert result.failed == 0, dict(result.errors)
    assert result.delivered == len(rows)
    assert result.per_topic == {topics["dest"]: len(rows)}
    assert not result.interrupted

    replayed = _consume_all(settings, topics["dest"], len(rows))
    assert sorted(map(_row, replayed), key=repr) == sorted(rows, key=repr)
    assert any(m.value == BINARY_VALUE for m in replayed)
    assert any(m.value is None and m.key == rows[299][0] for m in replayed)
    # Per-key order: each key's records come back in the order they were produced.
    sent_order: dict[bytes, list] = defaultdict(list)
    for key, value, ts, _ in rows:
        sent_order[key].append((value, ts))
    got_order: dict[bytes, list] = defaultdict(list)
    for message in replayed:  # partition by partition, offsets ascending
        got_order[message.key].append((message.value, message.timestamp))
    assert got_order == sent_order


def test_replay_at_10x_follows_recorded_pace_and_shifts_to_now(
    topics: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    # Five records 500 ms apart: 2 s of recorded time, due over ~0.2 s at 10x.
    recorded_base = 1_600_000_000_000
    messages = [RecordedMessage(topic="recorded.topic", partition=0, offset=i,
                                timestamp_ms=recorded_base + i * 500, key=b"k",
                                value=b"v%d" % i, headers=(("n", b"%d" % i),))
                for i in range(5)]
    path = tmp_path / "paced.jsonl.gz"
    write_recording(path, ["recorded.topic"], messages)

    before_ms = int(time.time() * 1000)
    started = time.monotonic()
    result = replay(access(settings, "admin"), path, speed=10,
                    topic_map={"recorded.topic": topics["paced"]}, shift_to_now=True)
    wall_s = time.monotonic() - started
    assert result.delivered == 5 and result.failed == 0
    # Loose lower bound only: at max speed this takes a few ms of pacing, at 10x >= 0.2 s.
    assert wall_s >= 0.15
    assert result.duration_s >= 0.15

    got = _consume_all(settings, topics["paced"], 5)
    assert [m.value for m in got] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert [m.headers for m in got] == [[("n", b"%d" % i)] for i in range(5)]
    stamps = [m.timestamp for m in got]
    assert stamps[0] >= before_ms  # shifted to the replay's "now", not 2020
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [500] * 4  # recorded gaps kept


def test_replay_merges_partitions_recorded_from_beginning_by_time(
    topics: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    # 30 records 69 ms apart (~2 s of timestamps), in disjoint time slices per partition and in
    # reverse: partition 2 holds the oldest, partition 0 the newest. Recorded from the beginning
    # the file holds them partition batch by partition batch; paced in file order, a file that
    # starts with partition 0 would be replayed in ~0.3 s at 2x instead of ~1 s.
    base = int(time.time() * 1000) - 60_000
    per_partition: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
    for i in range(30):
        per_partition[PARTITIONS - 1 - i // 10].append((b"v%02d" % i, base + i * 69))
    producer = KafkaProducer(**access(settings, "admin").client_config(), acks="all",
                             enable_idempotence=True)
    futures = [producer.send(topics["spread-src"], partition=partition, key=b"part-%d" % partition,
                             value=value, timestamp_ms=ts)
               for partition, rows in per_partition.items() for value, ts in rows]
    producer.flush(timeout=30)
    producer.close()
    for future in futures:
        future.get(timeout=1)

    path = tmp_path / "spread.jsonl.gz"
    stats = record(access(settings, "admin"), [topics["spread-src"]], path, from_beginning=True,
                   idle_timeout_s=3.0)
    assert stats.records == 30
    recorded = list(iter_recording(path))
    assert {m.partition for m in recorded} == set(range(PARTITIONS))

    started = time.monotonic()
    result = replay(access(settings, "admin"), path, speed=2,
                    topic_map={topics["spread-src"]: topics["spread-dst"]})
    wall_s = time.monotonic() - started
    assert result.delivered == 30 and result.failed == 0, dict(result.errors)
    # ~2 s of recorded time at 2x is ~1 s, whatever partition the file starts with. Loose lower
    # bound only (never an upper one: a busy machine may be slower).
    assert wall_s >= 0.7, f"replayed ~2 s of records at 2x in {wall_s:.2f}s"
    assert result.duration_s >= 0.7

    got = _consume_all(settings, topics["spread-dst"], 30)
    assert sorted((m.value, m.timestamp) for m in got) == sorted(
        (value, ts) for rows in per_partition.values() for value, ts in rows)
    # Per-key (= per source partition) order survives the merge.
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for message in got:  # partition by partition, offsets ascending
        by_key[message.key].append(message.value)
    assert by_key == {b"part-%d" % p: [value for value, _ in rows]
                      for p, rows in per_partition.items()}


def test_record_from_end_only_captures_new_records(
    topics: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    old = [(b"k", b"old-%d" % i, int(time.time() * 1000), ()) for i in range(20)]
    _produce(settings, topics["live"], old)
    path = tmp_path / "live.jsonl.gz"
    ready = threading.Event()
    outcome: dict = {}

    def run() -> None:
        outcome["stats"] = record(access(settings, "admin"), [topics["live"]], path,
                                  from_beginning=False, idle_timeout_s=3.0,
                                  progress=lambda _n, _s: ready.set())

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(30), "recorder never started polling"
    new = [(b"k", b"new-%d" % i, int(time.time() * 1000), ()) for i in range(5)]
    _produce(settings, topics["live"], new)
    thread.join(60)
    assert not thread.is_alive()
    assert outcome["stats"].records == 5
    assert [m.value for m in iter_recording(path)] == [b"new-%d" % i for i in range(5)]


def test_cli_record_and_replay(topics: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    base = int(time.time() * 1000) - 10_000
    rows = [(KEYS[i % 4], b"cli-%d" % i, base + i, (("i", b"%d" % i),)) for i in range(40)]
    _produce(settings, topics["cli-src"], rows)
    path = tmp_path / "cli.jsonl.gz"
    runner = CliRunner()

    recorded = runner.invoke(main, ["record", "--topic", topics["cli-src"], "--output", str(path),
                                    "--idle-timeout", "3"])
    assert recorded.exit_code == 0, recorded.output
    assert "40 records" in recorded.output and "stopped by idle" in recorded.output
    assert sum(1 for _ in iter_recording(path)) == 40

    replayed = runner.invoke(main, ["replay", str(path), "--speed", "max", "--topic-map",
                                    f"{topics['cli-src']}={topics['cli-dst']}"])
    assert replayed.exit_code == 0, replayed.output
    assert "40 of 40 records delivered" in replayed.output and "errors: none" in replayed.output
    got = _consume_all(settings, topics["cli-dst"], 40)
    assert sorted(map(_row, got)) == sorted(rows)


def test_cli_reports_bad_input_clearly(topics: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["record", "--topic", f"no-such-topic-{uuid.uuid4().hex[:8]}",
                                   "--output", str(tmp_path / "x.gz")])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    assert not (tmp_path / "x.gz").exists()

    path = tmp_path / "one.jsonl.gz"
    write_recording(path, ["a"], [RecordedMessage("a", 0, 0, 1, None, b"x")])
    bad_speed = runner.invoke(main, ["replay", str(path), "--speed", "0"])
    assert bad_speed.exit_code == 2 and "speed" in bad_speed.output
    no_dest = runner.invoke(main, ["replay", str(path), "--speed", "max", "--topic-map",
                                   f"a=no-such-topic-{uuid.uuid4().hex[:8]}"])
    assert no_dest.exit_code == 1 and "do not exist" in no_dest.output


def _per_partition(records: list) -> dict[int, list[tuple]]:
    """partition -> [(timestamp, key, value)] from replay_plan tuples or consumed messages."""
    out: dict[int, list[tuple]] = defaultdict(list)
    for partition, ts, key, value in records:
        out[partition].append((ts, key, value))
    return dict(out)


def _consumed(settings: Settings, topic: str, expected: int) -> dict[int, list[tuple]]:
    return _per_partition([(m.partition, m.timestamp, m.key, m.value)
                           for m in _consume_all(settings, topic, expected)])


def test_simulated_telemetry_replays_exactly_its_plan_into_any_partition_count(
    make_topic: Callable[[str, int], str], settings: Settings, tmp_path: Path
) -> None:
    source = make_topic("sim-src", PARTITIONS)
    sim = ScenarioSimulator(build_scenario(["small", "pengcheng"], None, [], 7, None))
    publisher = TelemetryPublisher(access(settings, "admin"), source)
    stats = run_scenario(sim, 60, None, publisher.publish_raw, publisher.broadcast)
    publisher.close()
    assert not publisher.failures
    records = stats.messages + stats.watermarks * PARTITIONS
    path = tmp_path / "sim.jsonl.gz"
    assert record(access(settings, "admin"), [source], path, idle_timeout_s=3.0).records == records
    live = _consumed(settings, source, records)

    same = make_topic("sim-same", PARTITIONS)
    result = replay(access(settings, "admin"), path, speed=None, topic_map={source: same})
    assert result.failed == 0 and result.delivered == records
    assert result.watermarks == stats.watermarks and result.converted == 0
    replayed = _consumed(settings, same, records)
    assert replayed == _per_partition(replay_plan(path, PARTITIONS))
    assert replayed == live  # the live order, partition by partition

    wide = make_topic("sim-wide", 5)
    result = replay(access(settings, "admin"), path, speed=None, topic_map={source: wide})
    expected = stats.messages + stats.watermarks * 5
    assert result.failed == 0 and result.delivered == expected
    replayed = _consumed(settings, wide, expected)
    assert replayed == _per_partition(replay_plan(path, 5))
    for sequence in replayed.values():
        marks = [(Watermark.model_validate_json(v).site, ts) for ts, k, v in sequence if k.endswith(b"/~watermark")]
        assert len(marks) == len(set(marks)) == stats.watermarks  # every watermark, once, on every partition


def _v1(site: str, device: str, ts_ms: int, **location: str) -> bytes:
    ts = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"schema": TELEMETRY_V1_SCHEMA, "site": site, **location, "device": device,
                         "kind": "pdu" if "rack" in location else "ups", "seq": ts_ms // 10_000 % 1000,
                         "ts": ts, "metrics": {"power_kw": 42.5}})


def test_a_v1_recording_is_converted_on_replay(
    make_topic: Callable[[str, int], str], settings: Settings, tmp_path: Path
) -> None:
    base = int(time.time() * 1000) // 10_000 * 10_000 - 600_000
    messages = []
    for tick in range(4):
        t = base + tick * 10_000
        for site, partition in (("alpha", 0), ("beta", 1)):
            messages += [
                RecordedMessage("raw.v1", partition, len(messages), t, site.encode(),
                                _v1(site, f"pdu-{site}-k1", t + 120, hall="h1", row="h1-r01", rack=f"{site}-k1")),
                RecordedMessage("raw.v1", partition, len(messages) + 1, t, site.encode(),
                                _v1(site, "ups-h1", t + 480, hall="h1")),
            ]
    messages.append(RecordedMessage("raw.v1", 0, len(messages), base + 35_000, b"alpha", b"\x00 not telemetry"))
    path = tmp_path / "v1.jsonl.gz"
    write_recording(path, ["raw.v1"], messages)
    dest = make_topic("v1-dst", 4)

    replayed = CliRunner().invoke(main, ["replay", str(path), "--speed", "max", "--topic-map", f"raw.v1={dest}"])
    assert replayed.exit_code == 0, replayed.output
    sends = 16 + 1 + 2 * 3 * 4  # converted, passed through, 3 synthesised watermarks per site x 4 partitions
    assert f"{sends} of {sends} records delivered" in replayed.output
    assert "16 v1 records converted; 6 watermarks" in replayed.output
    got = _consumed(settings, dest, sends)
    assert got == _per_partition(replay_plan(path, 4))
    values = [(k, v) for sequence in got.values() for _, k, v in sequence]
    assert (b"alpha", b"\x00 not telemetry") in values
    batches = [TelemetryBatch.model_validate_json(v) for k, v in values if b"/" in k and not k.endswith(b"/~watermark")]
    assert len(batches) == 16 and all(len(b.samples) == 1 for b in batches)
    assert {b.agent for b in batches} == {"rack-alpha-k1", "rack-beta-k1", "hall-h1"}
    for sequence in got.values():
        marks = [Watermark.model_validate_json(v) for _, k, v in sequence if k.endswith(b"/~watermark")]
        assert sorted((m.site, m.ts.timestamp() * 1000) for m in marks) == sorted(
            (site, base + tick * 10_000 - 1_000) for site in ("alpha", "beta") for tick in (1, 2, 3))


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd", "gzip"])
def test_records_any_producer_compressed_are_recorded(topics: dict[str, str], settings: Settings, tmp_path: Path,
                                                      codec: str) -> None:
    """Other producers pick their own codec; `record` read none of snappy's before (no codec library)."""
    base = int(time.time() * 1000) - 5_000
    rows = [(KEYS[i % 4], b"%s-%d" % (codec.encode(), i), base + i, ()) for i in range(12)]
    _produce(settings, topics["snappy"], rows, compression=codec)
    path = tmp_path / f"{codec}.jsonl.gz"
    stats = record(access(settings, "admin"), [topics["snappy"]], path, idle_timeout_s=3.0)
    values = {m.value for m in iter_recording(path)}
    assert {value for _, value, _, _ in rows} <= values and stats.records == len(values)
