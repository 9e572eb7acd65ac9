"""The Faust stage's validation against the real broker, on a fresh sandbox topic: every raw
record, and every sample inside a batch, goes forward or to the dead-letter topic exactly once
with the right reason; a bad sample is dead-lettered alone and its siblings go on; a value the
broker accepts but the stage refuses (800 KB, 2 MB compressible) gets a dead letter that fits;
and records claiming year 9999 (or 2200) in both timestamps, first on a partition and
mid-stream, move no one's event time."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from dcpulse.contract import DEADLETTER_ORIGINAL_BYTES, WATERMARK_SCHEMA, agent_key, utc_now, watermark_key
from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import KeyPartitioner
from dcpulse.producers.scenario_args import current_minute
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import isolated, tail_consumer

pytestmark = pytest.mark.integration

TIMEOUT_S = 180
SETTLE_S = 8  # keep reading this long after the last expected record: catches doubles
YEAR_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
YEAR_2200 = datetime(2200, 1, 1, tzinfo=UTC)  # storable by InfluxDB, so judged by the watermark rule


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_until(consumers: dict[str, KafkaConsumer], keep: Callable[[Any], bool], done: Callable[[dict], bool],
               check: Callable[[], None]) -> dict[str, list]:
    """Poll every consumer, keeping the messages `keep` accepts, until `done(found)` has held
    for SETTLE_S, or TIMEOUT_S passed."""
    found: dict[str, list] = {name: [] for name in consumers}
    deadline = time.monotonic() + TIMEOUT_S
    settled_at = None
    while time.monotonic() < deadline:
        for name, consumer in consumers.items():
            for batch in consumer.poll(timeout_ms=250).values():
                found[name].extend(m for m in batch if keep(m))
        if done(found):
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > SETTLE_S:
                break
        check()
    return found


class Raw:
    """Sends to the raw topic, each record to an explicit partition, remembering where it went.
    gzip and a 4 MiB request limit, so a 2 MB compressible value reaches the broker."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.telemetry
        self.producer = KafkaProducer(**access(settings, "admin").client_config(), acks="all",
                                      compression_type="gzip", max_request_size=4 * 1024 * 1024)
        self.partitioner = KeyPartitioner(settings.topics.telemetry_partitions)
        self.futures: list[Any] = []

    def send(self, key: bytes, value: bytes, partition: int | None = None, timestamp_ms: int | None = None) -> None:
        partition = self.partitioner(key) if partition is None else partition
        self.futures.append(self.producer.send(self.topic, key=key, value=value, partition=partition,
                                               timestamp_ms=timestamp_ms))

    def broadcast(self, key: bytes, value: bytes, timestamp_ms: int) -> None:
        for partition in range(self.partitioner.partitions):
            self.send(key, value, partition, timestamp_ms)

    def close(self) -> list[tuple[int, int]]:
        """Flush; (partition, offset) of every record, in send order."""
        self.producer.flush()
        placed = [(m.partition, m.offset) for m in (f.get(timeout=30) for f in self.futures)]
        self.producer.close()
        return placed


def batch(site: str, agent: str, samples: list[dict], **extra: Any) -> bytes:
    return orjson.dumps({"schema": "dcpulse.telemetry/2", "site": site, "agent": agent, "samples": samples, **extra})


def watermark(site: str, at: datetime) -> bytes:
    return orjson.dumps({"schema": WATERMARK_SCHEMA, "site": site, "producer": "test", "ts": iso(at)})


def pdu(device: str, seq: int, at: datetime, **changes: Any) -> dict[str, Any]:
    return {"device": device, "kind": "pdu", "hall": "h1", "row": "r01", "rack": "r01-k01", "seq": seq,
            "ts": iso(at), "metrics": {"power_kw": 42.5, "energy_kwh": 1000.0 + seq}, **changes}


def test_every_record_and_every_sample_is_forwarded_or_dead_lettered_once(
    services: LocalServices, settings: Settings, tmp_path
) -> None:
    with isolated(services, settings, "validation") as s:
        check_every_record_and_sample(s, tmp_path)


def check_every_record_and_sample(settings: Settings, tmp_path) -> None:
    site = f"vt-{uuid.uuid4().hex[:10]}"
    now = utc_now()
    base = now.replace(microsecond=now.microsecond // 1000 * 1000)
    agents = ["rack-a", "rack-b", "rack-c"]

    def round_of(agent: str, seq: int) -> bytes:
        at = base + timedelta(seconds=10 * seq)
        return batch(site, agent, [pdu(f"{agent}-pdu-{i}", seq, at) for i in range(2)])

    key = {agent: agent_key(site, agent).encode() for agent in agents}
    template = orjson.loads(round_of("rack-a", 0))
    a = key["rack-a"]
    # Whole records that are not a usable batch: (key, value, reason).
    whole = [
        (a, b'{"schema": "dcpulse.telemetry/2", "site": "%s", "samples": [' % site.encode(), "malformed_json"),
        (a, orjson.dumps({k: v for k, v in template.items() if k != "agent"}), "missing_field"),
        (a, orjson.dumps({**template, "samples": "seven"}), "wrong_type"),
        (a, orjson.dumps({**template, "colour": "red"}), "unknown_field"),
        # The broker takes both (its limit is 2 MiB, the second is gzip-compressed to a few KB);
        # the stage's limit is 512 KiB, and the dead letter keeps a bounded prefix.
        (a, orjson.dumps({**template, "pad": "x" * 800_000}), "oversize"),
        (a, orjson.dumps({**template, "pad": "y" * 2_000_000}), "oversize"),
        (site.encode(), round_of("rack-b", 9), "wrong_key"),  # a good batch under its site's key
    ]
    # One batch of rack-c carrying one good sample and one of each bad kind: (sample, reason).
    c_at = base + timedelta(seconds=30)
    in_batch = [
        (pdu("rack-c-pdu-0", 3, c_at), None),
        ({**pdu("rack-c-nan", 3, c_at), "metrics": {"power_kw": "NAN"}}, "non_finite"),
        (pdu("rack-c-absurd", 3, c_at, metrics={"power_kw": -5.0}), "absurd_value"),
        (pdu("rack-c-pdu-1", 1, base + timedelta(seconds=10)), "duplicate"),  # round 1 again
        (pdu("rack-c-skew", 3, c_at + timedelta(seconds=600)), "clock_skew"),  # 10 min ahead of its record
        ({**pdu("rack-c-type", 3, c_at), "seq": "seven"}, "wrong_type"),
        (pdu("rack-c-field", 3, c_at, colour="red"), "unknown_field"),
        (pdu("rack-c-9999", 3, YEAR_9999), "invalid_fields"),  # not a time InfluxDB can store
    ]
    mixed = batch(site, "rack-c", [s for s, _ in in_batch]).replace(b'"NAN"', b"NaN")

    raw = Raw(settings)
    expected_valid: Counter[tuple[bytes, bytes]] = Counter()
    consumers = {"valid": tail_consumer(settings, settings.topics.telemetry_valid),
                 "dead": tail_consumer(settings, settings.topics.deadletter)}
    sent: list[tuple[bytes, bytes]] = []

    def send(k: bytes, v: bytes) -> None:
        raw.send(k, v)
        sent.append((k, v))

    for seq in range(3):
        for agent in agents:
            send(key[agent], round_of(agent, seq))
            expected_valid[key[agent], round_of(agent, seq)] += 1
    for k, v, _ in whole:
        send(k, v)
    send(key["rack-c"], mixed)
    for agent in agents:
        send(key[agent], round_of(agent, 4))
        expected_valid[key[agent], round_of(agent, 4)] += 1

    try:
        with running_pipeline(settings, log_dir=tmp_path) as pipeline:
            placed = dict(zip(range(len(sent)), raw.close(), strict=True))
            ours = set(key.values()) | {site.encode()}
            found = read_until(consumers, lambda m: m.key in ours,
                               lambda f: len(f["valid"]) >= sum(expected_valid.values()) + 1
                               and len(f["dead"]) >= len(whole) + len(in_batch) - 1,
                               pipeline.check_alive)
    finally:
        for consumer in consumers.values():
            consumer.close()
    where = {v: placed[i] for i, (_, v) in enumerate(sent)}

    # Whole records: one dead letter each, the original kept up to the bound, with size and digest.
    letters = [(m, orjson.loads(m.value)) for m in found["dead"]]
    assert all(len(m.value) < 1024 * 1024 for m, _ in letters), "a dead letter must fit any producer limit"
    record_letters = [(m, d) for m, d in letters if d["sample_index"] is None]
    assert sorted(d["reason"] for _, d in record_letters) == sorted(r for _, _, r in whole)
    for (k, value, reason) in whole:
        digest = hashlib.sha256(value).hexdigest()
        matching = [(m, d) for m, d in record_letters if d["original_sha256"] == digest]
        assert len(matching) == 1, reason
        message, letter = matching[0]
        assert letter["reason"] == reason and letter["stage"] == "validate", letter["detail"]
        assert base64.b64decode(letter["original_value_b64"]) == value[:DEADLETTER_ORIGINAL_BYTES]
        assert letter["original_size"] == len(value)
        assert letter["original_truncated"] == (len(value) > DEADLETTER_ORIGINAL_BYTES)
        assert base64.b64decode(letter["original_key_b64"]) == k == message.key
        assert (letter["source_topic"], [letter["source_partition"], letter["source_offset"]]) == (
            raw.topic, list(where[value]))

    # Bad samples: one dead letter each, naming the batch's origin and the sample's index.
    sample_letters = sorted((d["sample_index"], d) for _, d in letters if d["sample_index"] is not None)
    expected_samples = [(i, reason) for i, (_, reason) in enumerate(in_batch) if reason]
    assert [(i, d["reason"]) for i, d in sample_letters] == expected_samples, [d["detail"] for _, d in sample_letters]
    for i, letter in sample_letters:
        original = json.loads(base64.b64decode(letter["original_value_b64"]))  # json: NaN reads back
        assert original["device"] == in_batch[i][0]["device"]
        assert (letter["source_partition"], letter["source_offset"]) == where[mixed]

    # Good batches forwarded once, byte for byte; the mixed batch replaced by its good sample alone.
    forwarded = [(m.key, m.value) for m in found["valid"]]
    assert Counter(kv for kv in forwarded if kv in expected_valid) == expected_valid
    replacements = [orjson.loads(v) for k, v in forwarded if (k, v) not in expected_valid and k == key["rack-c"]]
    assert len(forwarded) == sum(expected_valid.values()) + 1
    assert replacements == [{"schema": "dcpulse.telemetry/2", "site": site, "agent": "rack-c",
                             "samples": [in_batch[0][0]]}]
    # Each device's samples in order (one raw partition per agent, handled in order).
    order: dict[str, list[int]] = {}
    for message in found["valid"]:
        for s in orjson.loads(message.value)["samples"]:
            order.setdefault(s["device"], []).append(s["seq"])
    assert order == {f"{agent}-pdu-{i}": [0, 1, 2, 4] if (agent, i) != ("rack-c", 0) else [0, 1, 2, 3, 4]
                     for agent in agents for i in range(2)}

    # The worker's final counts say the same.
    lines = (tmp_path / "streams-1.log").read_text(errors="replace").splitlines()
    finals = [orjson.loads(line[line.index("{"):]) for line in lines if '"stage counts"' in line and '"final"' in line]
    assert finals, "no final stage counts logged at shutdown"
    analyse = [f for f in finals if f.get("agent") == "analyse"]
    assert analyse[-1]["oversize"] >= 2 and analyse[-1]["clock_skew"] >= 1 and analyse[-1]["duplicate"] >= 1


def test_far_future_records_first_and_mid_stream_move_no_ones_event_time(
    services: LocalServices, settings: Settings, tmp_path
) -> None:
    """A fresh topic (so the attack is the first record of every partition), then 11 minutes of
    a site's ticks with its watermarks, the attack again at minute 5. Every partition must go on
    closing every window of the site, and each attacking record is dead-lettered or held."""
    site = f"ff-{uuid.uuid4().hex[:8]}"
    base = current_minute() - timedelta(minutes=15)
    ticks = 66  # 11 simulated minutes of 10 s ticks
    with isolated(services, settings, "future") as s:
        raw = Raw(s)
        wm_key = watermark_key(site).encode()
        agents = [f"rack-{i}" for i in range(8)]  # spread over the partitions

        def attack() -> None:
            for far in (YEAR_9999, YEAR_2200):
                raw.broadcast(wm_key, watermark(site, far), ms(far))
            raw.send(agent_key(site, agents[0]).encode(),
                     batch(site, agents[0], [pdu("attacker", 0, YEAR_9999)]), timestamp_ms=ms(YEAR_9999))

        attack()
        for tick in range(ticks):
            at = base + timedelta(seconds=10 * tick)
            for agent in agents:
                raw.send(agent_key(site, agent).encode(), batch(site, agent, [pdu(f"{agent}-pdu", tick, at)]),
                         timestamp_ms=ms(at))
            mark = at + timedelta(seconds=9)
            raw.broadcast(wm_key, watermark(site, mark), ms(mark))
            if tick == 30:
                attack()
        partials = tail_consumer(s, s.topics.partials)
        dead = tail_consumer(s, s.topics.deadletter)
        partials.seek_to_beginning()
        dead.seek_to_beginning()
        raw.close()
        partitions = s.topics.telemetry_partitions
        window = timedelta(seconds=s.analytics.window_s)
        last_mark = base + timedelta(seconds=10 * (ticks - 1) + 9)
        closed = [base + window * i for i in range(60) if base + window * (i + 1) + timedelta(
            seconds=s.analytics.allowed_lateness_s) <= last_mark]
        expected = {(p, ms(start)) for p in range(partitions) for start in closed}
        try:
            with running_pipeline(s, log_dir=tmp_path) as pipeline:
                found = read_until({"partials": partials, "dead": dead}, lambda m: True,
                                   lambda f: len(f["partials"]) >= len(expected), pipeline.check_alive)
        finally:
            partials.close()
            dead.close()

    got = Counter((d["partition"], d["start_ms"]) for d in map(orjson.loads, (m.value for m in found["partials"])))
    assert set(got) == expected, sorted(set(got) ^ expected)[:10]
    assert max(got.values()) == 1  # each window closed once per partition
    letters = Counter((d["reason"], d["sample_index"]) for d in (orjson.loads(m.value) for m in found["dead"]))
    # Year 9999 cannot be stored: each such watermark (on every partition) and sample is refused.
    assert letters == {("invalid_fields", None): 2 * partitions, ("invalid_fields", 0): 2}
