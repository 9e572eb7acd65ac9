"""Replay determinism end to end: simulate, record, replay at two speeds into fresh topics and
fresh buckets; every PUE and utilisation value in InfluxDB must be identical across the runs
and equal to the offline reference computed from the recorded file by the pure functions."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient

from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.recording import iter_recording, record, replay
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario, current_minute
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.pipeline import running_pipeline
from dcpulse.services.manager import LocalServices
from dcpulse.services.topics import ensure_topics, topic_specs
from dcpulse.settings import Settings
from dcpulse.sinks.query import flux_string, flux_time
from dcpulse.streams.offline import reference_results

pytestmark = pytest.mark.integration
MINUTES = 12


@contextmanager
def isolated(services: LocalServices, base: Settings, name: str) -> Iterator[Settings]:
    """Own topic prefix and own analytics bucket, passed to the pipeline's children by env."""
    prefix = f"test-{name}-{uuid.uuid4().hex[:6]}"
    bucket = prefix.replace("-", "_")
    admin_token = services.credentials().admin_token
    with InfluxDBClient(url=base.influx.url, token=admin_token, org=base.influx.org) as client:
        created = client.buckets_api().create_bucket(bucket_name=bucket, org=base.influx.org)
    env = {"DCPULSE_TOPICS__PREFIX": prefix, "DCPULSE_INFLUX__BUCKETS__ANALYTICS": bucket,
           # The scoped write token only covers the standard buckets; this test bucket is the admin's.
           "DCPULSE_INFLUX__WRITE_TOKEN": admin_token, "DCPULSE_INFLUX__READ_TOKEN": admin_token}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings()
        ensure_topics(settings.kafka.bootstrap, topic_specs(settings.topics))
        yield settings
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with InfluxDBClient(url=base.influx.url, token=admin_token, org=base.influx.org) as client:
            client.buckets_api().delete_bucket(created)


def read_results(settings: Settings, start) -> dict[str, dict]:
    # Roll-ups are stamped at their window start, up to an hour before the first sample.
    since = start - timedelta(hours=1)
    query = (f"from(bucket: {flux_string(settings.influx.buckets.analytics)}) |> range(start: {flux_time(since)})"
             ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    token = settings.influx.read_token.get_secret_value()
    out = {}
    with InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org) as client:
        for table in client.query_api().query(query):
            for row in table.records:
                values = dict(row.values)
                tags = {k: values.pop(k) for k in list(values) if k in
                        ("site", "category", "window", "hall", "level", "entity")}
                key = f"{values.pop('_measurement')},{','.join(f'{k}={v}' for k, v in sorted(tags.items()))}@" \
                      f"{values.pop('_time').isoformat()}"
                out[key] = {k: v for k, v in values.items() if not k.startswith("_") and k not in ("result", "table")
                            and v is not None}
    return out


def run_replay(services, settings_base, recording: Path, source_topic: str, speed: float | None, name: str,
               expected: int, tmp_path: Path, start) -> dict[str, dict]:
    with isolated(services, settings_base, name) as settings, \
            running_pipeline(settings, log_dir=tmp_path / name) as pipeline:
        replay(settings.kafka.bootstrap, recording, speed=speed, topic_map={source_topic: settings.topics.telemetry})
        deadline = time.monotonic() + 240
        results: dict[str, dict] = {}
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            pipeline.check_alive()
            latest = read_results(settings, start)
            if len(latest) != len(results):
                stable_since = time.monotonic()
            results = latest
            # Done when everything expected is there, or nothing new has come for 20 s.
            if len(results) >= expected or (results and time.monotonic() - stable_since > 20):
                break
            time.sleep(2)
        time.sleep(3)  # anything still in flight would show as an extra point below
        return read_results(settings, start)


def test_replays_at_two_speeds_equal_each_other_and_the_offline_reference(
        services: LocalServices, settings: Settings, tmp_path: Path) -> None:
    start = current_minute() - timedelta(minutes=MINUTES + 5)
    with isolated(services, settings, "source") as source:
        sim = ScenarioSimulator(build_scenario(["small"], None, ["counter_reset:small:pdu-h1-r01-k01@5m"], 7, start))
        publisher = TelemetryPublisher(source.kafka.bootstrap, source.topics.telemetry)
        run_scenario(sim, MINUTES * 60.0, None, publisher.publish_raw)
        publisher.close()
        recording = tmp_path / "small.jsonl.gz"
        stats = record(source.kafka.bootstrap, [source.topics.telemetry], recording, idle_timeout_s=3.0)
        source_topic = source.topics.telemetry
    assert stats.records == publisher.sent
    messages = list(iter_recording(recording))
    reference = reference_results((m.partition, m.timestamp_ms, m.value) for m in messages)
    expected = {k: {f: v for f, v in p.fields.items()} for k, p in reference.items()}
    assert len(expected) > 100
    realtime_ish = run_replay(services, settings, recording, source_topic, 20.0, "x20", len(expected), tmp_path, start)
    flat_out = run_replay(services, settings, recording, source_topic, None, "max", len(expected), tmp_path, start)
    assert sorted(set(realtime_ish) ^ set(flat_out)) == []
    assert [k for k in flat_out if flat_out[k] != realtime_ish[k]] == []
    assert sorted(set(expected) - set(flat_out)) == [], "results missing from InfluxDB"
    assert sorted(set(flat_out) - set(expected)) == [], "results the reference does not have"
    for key, fields in expected.items():
        assert flat_out[key] == pytest.approx(fields), key
