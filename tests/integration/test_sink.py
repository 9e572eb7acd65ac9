"""The InfluxDB sinks against the real servers: what lands, what is dead-lettered, what is
committed, and how fast a restarted `dcpulse sink` takes over from a stopped or killed one."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from dcpulse.contract import AnalyticsPoint, DeviceKind, Sample, TelemetryBatch, utc_now
from dcpulse.kafka_clients import access
from dcpulse.sandbox import sandbox
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.query import flux_string, flux_time, read_rows
from dcpulse.sinks.runner import build_sinks

pytestmark = pytest.mark.integration


def telemetry(*samples: tuple[str, datetime]) -> bytes:
    return TelemetryBatch(site="s1", agent="rack-k1", samples=[
        Sample(device=device, kind=DeviceKind.PDU, rack="k1", seq=0, ts=ts, metrics={"power_kw": 1.5})
        for device, ts in samples]).to_bytes()


def produce(settings: Settings, topic: str, *values: bytes) -> None:
    producer = KafkaProducer(**access(settings, "admin").client_config())
    for value in values:
        producer.send(topic, key=b"s1/rack-k1", value=value).get(timeout=30)
    producer.close()


def landed(settings: Settings, bucket: str, since: datetime) -> set[str]:
    """The devices (or, without a device tag, the measurements) in `bucket` since a minute before `since`."""
    query = (f"from(bucket: {flux_string(bucket)}) |> range(start: {flux_time(since - timedelta(minutes=1))})"
             ' |> filter(fn: (r) => r._field == "seq" or r._measurement == "pue")')
    token = influx_token(settings, "read")  # the sandbox's read-only token
    return {row.get("device") or row["_measurement"] for row in read_rows(settings.influx.url, token,
                                                                          settings.influx.org, query)}


@contextmanager
def admin(settings: Settings) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(**access(settings, "admin").client_config())
    try:
        yield client
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `condition()` held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.fixture
def isolated(services: LocalServices, settings: Settings) -> Iterator[Settings]:
    with sandbox(settings, services.credentials().admin_token, "test-sink") as sandboxed:
        yield sandboxed


def test_sinks_land_good_lines_dead_letter_the_rest_and_commit_after(isolated: Settings) -> None:
    settings, now = isolated, utc_now()
    letters = KafkaConsumer(settings.topics.deadletter, **access(settings, "admin").client_config(),
                            auto_offset_reset="earliest", consumer_timeout_ms=500)
    produce(settings, settings.topics.telemetry_valid,
            telemetry(("pdu-1", now), ("pdu-old", now - timedelta(hours=80)), ("pdu-2", now)), b"{not json")
    point = AnalyticsPoint(measurement="pue", tags={"site": "s1"}, fields={"pue": 1.2}, time=now.replace(second=0))
    produce(settings, settings.topics.pue, point.to_bytes())
    token = influx_token(settings, "write")
    sinks = build_sinks(settings, lambda: InfluxWriter(settings.influx.url, token, settings.influx.org))
    threads = [threading.Thread(target=sink.run) for sink in sinks]
    for thread in threads:
        thread.start()
    found: list[dict] = []

    def two_letters() -> bool:
        found.extend(orjson.loads(message.value) for message in letters)
        return len(found) >= 2

    try:
        wait_for(two_letters, 60, "the dead letters")
        wait_for(lambda: landed(settings, settings.influx.buckets.raw, now) == {"pdu-1", "pdu-2"}
                 and landed(settings, settings.influx.buckets.analytics, now) == {"pue"}, 60, "the points")
        wait_for(lambda: sinks[0].stats.records == 2, 30, "the commit")
    finally:
        for sink in sinks:
            sink.stopping.set()
        for thread in threads:
            thread.join(timeout=60)
        letters.close()
    assert sorted((f["reason"], f["sample_index"], f["source_offset"]) for f in found) == [
        ("malformed_json", None, 1), ("outside_retention", 1, 0)]
    old = next(f for f in found if f["reason"] == "outside_retention")
    assert orjson.loads(base64.b64decode(old["original_value_b64"]))["device"] == "pdu-old"
    group = settings.topics.group("sink-raw")
    with admin(settings) as client:
        committed = client.list_group_offsets({group: None})[group]
    assert group.startswith(f"{settings.topics.prefix}-") and sum(o.offset for o in committed.values()) == 2


@contextmanager
def sink_process() -> Iterator[subprocess.Popen[bytes]]:
    """`dcpulse sink` as the pipeline starts it (settings through the sandbox's environment)."""
    proc = subprocess.Popen([sys.executable, "-m", "dcpulse.cli", "sink"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_restarted_sink_takes_over_at_once_from_a_stopped_one_and_from_a_killed_one(
        isolated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 60 s session timeout, so that data landing within 30 s of a restart shows the
    restarted sink did not wait for the killed one's session to expire (before static membership
    it did: 45 s by default, 10 s here then)."""
    monkeypatch.setenv("DCPULSE_SINK__SESSION_TIMEOUT_S", "60")
    settings, now = isolated, utc_now()
    group, raw = settings.topics.group("sink-raw"), settings.influx.buckets.raw

    def publish_and_wait(device: str, timeout_s: float) -> float:
        produce(settings, settings.topics.telemetry_valid, telemetry((device, now)))
        return wait_for(lambda: device in landed(settings, raw, now), timeout_s, f"{device} in InfluxDB")

    with sink_process() as first:
        publish_and_wait("pdu-1", 90)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    with sink_process() as second:
        publish_and_wait("pdu-2", 30)
        second.kill()
        second.wait()
    with sink_process():
        publish_and_wait("pdu-3", 30)
    with admin(settings) as client:  # one static member, the restarted sink in the killed one's place
        members = client.describe_groups([group])[group]["members"]
    assert [m["group_instance_id"] for m in members] == [f"{settings.topics.prefix}-sink-raw-1"]
