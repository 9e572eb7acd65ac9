"""One record through producer -> Kafka -> Faust -> sink -> InfluxDB, read back with Flux."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from dcpulse.contract import DeviceKind
from dcpulse.demo import demo_record, publish, wait_for_samples
from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.query import read_rows
from tests.integration.support import tail_consumer

pytestmark = pytest.mark.integration


def test_one_record_end_to_end_exact_values(services: LocalServices, settings: Settings, tmp_path) -> None:
    record = demo_record()
    (sample,) = record.samples
    with running_pipeline(settings, log_dir=tmp_path) as pipeline:
        publish(settings, record)
        rows = wait_for_samples(settings, sample.device, timeout_s=120, check=pipeline.check_alive)
    assert len(rows) == 1
    row = rows[0]
    assert row["_measurement"] == "pdu"
    assert row["_time"] == sample.ts.astimezone(UTC)
    assert (row["site"], row["hall"], row["row"], row["rack"], row["device"]) == (
        "demo", "h1", "r01", "r01-k01", sample.device)
    assert row["power_kw"] == 42.5
    assert row["energy_kwh"] == 1234.5
    assert row["seq"] == 0
    # Both stages were stopped when the context closed: no orphan worker left behind.
    assert all(proc.poll() is not None for proc in pipeline.procs.values())


def _wait_for_dead_letter(consumer: KafkaConsumer, key: bytes, match=lambda _letter: True,
                          timeout_s: float = 60) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for message in batch:
                if message.key == key and match(letter := orjson.loads(message.value)):
                    return letter
    return None


def test_record_older_than_raw_retention_is_dead_lettered_by_the_sink(
    services: LocalServices, settings: Settings, tmp_path
) -> None:
    """InfluxDB would refuse it (HTTP 422); the sink must say why, not retry forever."""
    fresh = demo_record()
    old = fresh.model_copy(update={"samples": [fresh.samples[0].model_copy(update={"ts": datetime(2020, 1, 1, tzinfo=UTC)})]})
    good = demo_record()
    good_device = good.samples[0].device
    deadletters = tail_consumer(settings, settings.topics.deadletter)
    with running_pipeline(settings, log_dir=tmp_path) as pipeline:
        publish(settings, old)
        publish(settings, good)
        rows = wait_for_samples(settings, good_device, timeout_s=120, check=pipeline.check_alive)
        found = _wait_for_dead_letter(deadletters, old.key.encode(), lambda d: d["stage"] == "sink")
    deadletters.close()
    assert rows and rows[0]["power_kw"] == 42.5
    assert found is not None and found["reason"] == "outside_retention" and found["sample_index"] == 0


def test_bad_record_is_dead_lettered_and_good_one_still_lands(
    services: LocalServices, settings: Settings, tmp_path
) -> None:
    key = f"demo/bad-{uuid.uuid4().hex[:8]}".encode()
    bad_value = b'{"schema": "dcpulse.telemetry/2", "site": "demo", "samples": [{NaN'
    deadletters = tail_consumer(settings, settings.topics.deadletter)
    good = demo_record()
    with running_pipeline(settings, log_dir=tmp_path) as pipeline:
        producer = KafkaProducer(**access(settings, "admin").client_config())
        producer.send(settings.topics.telemetry, key=key, value=bad_value)
        producer.flush()
        producer.close()
        publish(settings, good)
        rows = wait_for_samples(settings, good.samples[0].device, timeout_s=120, check=pipeline.check_alive)
        found = _wait_for_dead_letter(deadletters, key)
    deadletters.close()
    assert rows and rows[0]["power_kw"] == 42.5
    assert found is not None, "bad record never reached the dead-letter topic"
    assert found["reason"] == "malformed_json"
    assert found["stage"] == "validate"
    assert found["source_topic"] == settings.topics.telemetry
    assert base64.b64decode(found["original_value_b64"]) == bad_value


def test_a_leak_sample_raises_its_alert_on_the_alerts_topic(services: LocalServices, settings: Settings,
                                                             tmp_path) -> None:
    good = demo_record()
    leak = good.samples[0].model_copy(update={"device": f"leak-{uuid.uuid4().hex[:8]}", "kind": DeviceKind.LEAK_SENSOR,
                                              "row": None, "rack": None, "metrics": {"leak": 1.0}})
    batch = good.model_copy(update={"agent": "hall-h1", "samples": [leak]})
    alerts = tail_consumer(settings, settings.topics.alerts)
    with running_pipeline(settings, log_dir=tmp_path) as pipeline:
        publish(settings, batch)
        deadline, found = time.monotonic() + 120, None
        while found is None and time.monotonic() < deadline:
            pipeline.check_alive()
            for records in alerts.poll(timeout_ms=500).values():
                for message in records:
                    event = orjson.loads(message.value)
                    if event["labels"].get("device") == leak.device:
                        found = (message.key, event)
        rows = _wait_for_alert_rows(settings, leak.device, pipeline.check_alive) if found else []
    alerts.close()
    assert found is not None, "no alert transition for the leak"
    key, event = found
    assert event["labels"]["alertname"] == "coolant_leak" and event["new"] == "firing"
    assert event["labels"]["site"] == "demo" and event["labels"]["hall"] == "h1"
    assert key == event["fingerprint"].encode() and event["schema"] == "dcpulse.alert/1"
    assert len(rows) == 1, "the transition is not in the alerts bucket"
    assert (rows[0]["state"], rows[0]["old"], rows[0]["fingerprint"]) == ("firing", "inactive", event["fingerprint"])
    assert rows[0]["_time"] == leak.ts


def _wait_for_alert_rows(settings: Settings, device: str, check, timeout_s: float = 60) -> list[dict]:
    query = (f'from(bucket: "{settings.influx.buckets.alerts}") |> range(start: -1h, stop: 2100-01-01T00:00:00Z)'
             f' |> filter(fn: (r) => r._measurement == "alert" and r.device == "{device}")'
             ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check()
        rows = read_rows(settings.influx.url, influx_token(settings, "read"), settings.influx.org, query)
        if rows:
            return rows
        time.sleep(1)
    return []
