"""Faults mid-run: kill -9 the Faust worker mid-window and restart it, stop InfluxDB for 60 s and
start it again. Afterwards the results equal the offline reference of an undisturbed run and
no raw record is missing from InfluxDB."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.recording import replay
from dcpulse.producers.scenario_args import current_minute
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import (assert_equal_to_reference, isolated, recorded_samples,
                                       simulate_and_record, wait_for_raw_points,
                                       wait_for_results)

pytestmark = pytest.mark.integration
MINUTES = 10
INFLUX_DOWN_S = 60


def test_worker_kill_and_influx_outage_lose_nothing(services: LocalServices, settings: Settings, tmp_path: Path) -> None:
    start = current_minute() - timedelta(minutes=MINUTES + 5)
    recording, source_topic, expected = simulate_and_record(services, settings, tmp_path, start, MINUTES, [])
    with isolated(services, settings, "faults") as isolated_settings, \
            running_pipeline(isolated_settings, log_dir=tmp_path / "faults", workers=2) as pipeline:
        samples = recorded_samples(recording, isolated_settings.topics.telemetry_partitions)
        # 10 simulated minutes at 10x: about 60 s of replay, during which both faults strike.
        replayer = threading.Thread(target=replay, args=(access(isolated_settings, "admin"), recording),
                                    kwargs={"speed": 10.0, "topic_map": {source_topic: isolated_settings.topics.telemetry}})
        replayer.start()
        time.sleep(20)
        pipeline.kill("streams-2")  # mid-window: no goodbye, no commit
        time.sleep(2)
        pipeline.restart("streams-2")
        time.sleep(5)
        services.down(lambda _m: None, only=["influxdb"])
        time.sleep(INFLUX_DOWN_S)
        services.up(lambda _m: None)
        replayer.join(timeout=300)
        # quiet_s beyond the sink's 30 s backoff cap: its next attempt may come that long after
        # InfluxDB is back.
        found = wait_for_results(isolated_settings, start, len(expected), pipeline.check_alive, timeout_s=400,
                                 quiet_s=45)
        raw = wait_for_raw_points(isolated_settings, start - timedelta(minutes=1), samples, pipeline.check_alive)
    assert raw == samples, f"{samples - raw} of {samples} raw samples missing from InfluxDB"
    assert_equal_to_reference(found, expected)
