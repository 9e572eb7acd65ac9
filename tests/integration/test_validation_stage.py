"""The Faust validation stage against the real broker: every raw record goes forward or to the
dead-letter topic, exactly once, with the right reason; valid records are re-keyed by site."""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from datetime import timedelta

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from dcpulse.contract import DeviceKind, Telemetry, utc_now
from dcpulse.pipeline import running_pipeline
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import tail_consumer

pytestmark = pytest.mark.integration

TIMEOUT_S = 180
SETTLE_S = 8  # keep reading this long after the last expected record: catches doubles


def _read_until(consumers: dict[str, KafkaConsumer], keep, done, check) -> dict[str, list]:
    """Poll every consumer, keeping the messages `keep(name, message)` accepts, until `done(found)`
    has held for SETTLE_S, or TIMEOUT_S passed."""
    found: dict[str, list] = {name: [] for name in consumers}
    deadline = time.monotonic() + TIMEOUT_S
    settled_at = None
    while time.monotonic() < deadline:
        for name, consumer in consumers.items():
            for batch in consumer.poll(timeout_ms=250).values():
                found[name].extend(m for m in batch if keep(name, m))
        if done(found):
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > SETTLE_S:
                break
        check()
    return found


def test_every_raw_record_is_forwarded_or_dead_lettered_once(
    services: LocalServices, settings: Settings, tmp_path
) -> None:
    site = f"vt-{uuid.uuid4().hex[:10]}"  # only this run's records are looked at
    now = utc_now()
    base = now.replace(microsecond=now.microsecond // 1000 * 1000)
    devices = [f"pdu-{i}" for i in range(6)]

    def sample(device: str, seq: int, seconds: float, **metrics: float) -> Telemetry:
        return Telemetry(site=site, hall="h1", row="r01", rack="r01-k01", device=device, kind=DeviceKind.PDU,
                         seq=seq, ts=base + timedelta(seconds=seconds),
                         metrics=metrics or {"power_kw": 42.5, "energy_kwh": 1000.0 + seq})

    def good_round(seq: int, seconds: float) -> list[tuple[bytes, bytes, str | None]]:
        return [(site.encode(), sample(d, seq, seconds + i / 10).to_bytes(), None)
                for i, d in enumerate(devices)]

    template = orjson.loads(sample("bad", 0, 0).to_bytes())

    def bad(kind: str, value: bytes) -> tuple[bytes, bytes, str]:
        return site.encode(), value, kind

    duplicated = sample(devices[0], 1, 10)
    skewed = sample(devices[1], 3, 600)  # 10 min ahead of everything else on pdu-1's partition
    bad_records = [
        bad("malformed_json", b'{"schema": "dcpulse.telemetry/1", "site": "%s", "device": ' % site.encode()),
        bad("missing_field", orjson.dumps({k: v for k, v in template.items() if k != "ts"})),
        bad("wrong_type", orjson.dumps({**template, "seq": "seven"})),
        bad("unknown_field", orjson.dumps({**template, "colour": "red"})),
        bad("non_finite", orjson.dumps(template).replace(b'"power_kw":42.5', b'"power_kw":NaN')),
        bad("oversize", orjson.dumps({**template, "metrics": {f"m{i}": float(i) for i in range(9000)}})),
        bad("absurd_value", orjson.dumps({**template, "metrics": {"power_kw": -5.0}})),
        # Keyed by site like every record, so the same raw partition, after the original / after good samples.
        (site.encode(), duplicated.to_bytes(), "duplicate"),
        (site.encode(), skewed.to_bytes(), "clock_skew"),
        # A good sample keyed by device: its site's windows would be split across partitions.
        (f"{site}/{devices[2]}".encode(), sample(devices[2], 9, 25).to_bytes(), "wrong_key"),
    ]
    by_reason = {reason: value for _, value, reason in bad_records}
    assert b"NaN" in by_reason["non_finite"]
    assert len(by_reason["oversize"]) > settings.validation.max_message_bytes
    # (key, value, expected reason or None for valid), in the order they are produced.
    records = good_round(0, 0) + good_round(1, 10) + good_round(2, 20) + bad_records + good_round(4, 30)
    expected_bad = {value: (key, reason) for key, value, reason in records if reason is not None}
    expected_good = {key + b"|" + value: key for key, value, reason in records if reason is None}
    assert len(expected_bad) == 10 and len(expected_good) == 4 * len(devices)

    raw_topic = settings.topics.telemetry
    consumers = {"valid": tail_consumer(settings, settings.topics.telemetry_valid),
                 "dead": tail_consumer(settings, settings.topics.deadletter)}
    sent_partition: dict[bytes, int] = {}  # key -> raw partition it was written to
    try:
        with running_pipeline(settings, log_dir=tmp_path) as pipeline:
            producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
            futures = [(key, producer.send(raw_topic, key=key, value=value)) for key, value, _ in records]
            producer.flush()
            for key, future in futures:
                sent_partition[key] = future.get(timeout=30).partition
            producer.close()

            def keep(name: str, message) -> bool:
                if name == "valid":
                    return message.key == site.encode()
                return message.key is not None and message.key.split(b"/")[0] == site.encode()

            def done(found: dict[str, list]) -> bool:
                return len(found["valid"]) >= len(expected_good) and len(found["dead"]) >= len(expected_bad)

            found = _read_until(consumers, keep, done, pipeline.check_alive)
    finally:
        for consumer in consumers.values():
            consumer.close()

    # Every bad record: exactly once in the dead-letter topic, right reason, original bytes and origin.
    letters = [orjson.loads(m.value) for m in found["dead"]]
    originals = [base64.b64decode(letter["original_value_b64"]) for letter in letters]
    assert sorted(originals) == sorted(expected_bad), Counter(letter["reason"] for letter in letters)
    for message, letter, original in zip(found["dead"], letters, originals, strict=True):
        key, reason = expected_bad[original]
        assert letter["reason"] == reason, (reason, letter["detail"])
        assert letter["stage"] == "validate"
        assert base64.b64decode(letter["original_key_b64"]) == key == message.key
        assert (letter["source_topic"], letter["source_partition"]) == (raw_topic, sent_partition[key])
        assert letter["source_offset"] >= 0
    # The skewed record shares a partition with its good device's samples, which were accepted.
    assert sent_partition[site.encode()] == next(
        letter["source_partition"] for letter in letters if letter["reason"] == "clock_skew")

    # Every good record: exactly once in the valid topic, keyed by site, with its source partition.
    received = Counter()
    for message in found["valid"]:
        event = Telemetry.from_bytes(message.value)
        key = site.encode()
        received[key + b"|" + message.value] += 1
        assert message.key == site.encode()
        assert dict(message.headers)["dcpulse-src"] == f"{raw_topic}:{sent_partition[key]}".encode()
    assert received == Counter(expected_good.keys())  # each once, bytes as re-serialised by Telemetry.to_bytes()

    # Each device's samples arrive in order (one raw partition, processed in order).
    order: dict[str, list[int]] = {}
    for message in found["valid"]:
        event = Telemetry.from_bytes(message.value)
        order.setdefault(event.device, []).append(event.seq)
    assert order == {d: [0, 1, 2, 4] for d in devices}

    # The counts match exactly: 24 forwarded, one dead letter per kind.
    assert Counter(letter["reason"] for letter in letters) == Counter(
        {reason: 1 for reason in ("malformed_json", "missing_field", "wrong_type", "unknown_field", "non_finite",
                                  "oversize", "absurd_value", "wrong_key", "duplicate", "clock_skew")})
    assert len(found["valid"]) == 4 * len(devices)

    # The worker logged its counts when it shut down.
    lines = (tmp_path / "streams.log").read_text(errors="replace").splitlines()
    # (a line may start with the terminal escape codes of faust's spinner)
    finals = [orjson.loads(line[line.index("{"):]) for line in lines
              if '"stage counts"' in line and '"final"' in line]
    assert finals, "no final stage counts logged at shutdown"
    assert finals[-1]["valid"] >= 4 * len(devices) and finals[-1]["clock_skew"] >= 1
