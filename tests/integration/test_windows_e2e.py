"""Replay determinism end to end: simulate, record, replay at two speeds into fresh topics and
fresh buckets; every PUE and utilisation value in InfluxDB must be identical across the runs
and equal to the offline reference computed from the recorded file by the pure functions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dcpulse.pipeline import running_pipeline
from dcpulse.producers.recording import replay
from dcpulse.producers.scenario_args import current_minute
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import assert_equal_to_reference, isolated, simulate_and_record, wait_for_results

pytestmark = pytest.mark.integration
MINUTES = 12


def run_replay(services, settings_base, recording: Path, source_topic: str, speed: float | None, name: str,
               expected: int, tmp_path: Path, start) -> dict[str, dict]:
    with isolated(services, settings_base, name) as settings, \
            running_pipeline(settings, log_dir=tmp_path / name) as pipeline:
        replay(settings.kafka.bootstrap, recording, speed=speed, topic_map={source_topic: settings.topics.telemetry})
        return wait_for_results(settings, start, expected, pipeline.check_alive)


def test_replays_at_two_speeds_equal_each_other_and_the_offline_reference(
        services: LocalServices, settings: Settings, tmp_path: Path) -> None:
    start = current_minute() - timedelta(minutes=MINUTES + 5)
    recording, source_topic, expected = simulate_and_record(
        services, settings, tmp_path, start, MINUTES, ["counter_reset:small:pdu-h1-r01-k01@5m"])
    realtime_ish = run_replay(services, settings, recording, source_topic, 20.0, "x20", len(expected), tmp_path, start)
    flat_out = run_replay(services, settings, recording, source_topic, None, "max", len(expected), tmp_path, start)
    assert sorted(set(realtime_ish) ^ set(flat_out)) == []
    assert [k for k in flat_out if flat_out[k] != realtime_ish[k]] == []
    assert_equal_to_reference(flat_out, expected)
