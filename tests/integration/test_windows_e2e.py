"""The determinism matrix end to end: simulate (with faults), record, then replay the recording
into fresh topics and buckets at different speeds, with 1, 2 and 3 `dcpulse streams` processes
in one consumer group, and with a worker killed with kill -9 mid-window (and mid-pending: the
hot spot's inlet alerts wait out their `for` then) and restarted. Every result in InfluxDB
(every field of pue, ppue, site_efficiency, utilisation) and every alert transition on the
alerts topic must be identical across the runs and equal to the offline reference computed
from the recording's replay plan."""

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
from tests.integration.support import (
    assert_equal_to_reference,
    expected_transitions,
    isolated,
    read_transitions,
    simulate_and_record,
    wait_for_results,
)

pytestmark = pytest.mark.integration
MINUTES = 17  # several windows and the 15-minute roll-up


@pytest.fixture(scope="module")
def recorded(services: LocalServices, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    start = current_minute() - timedelta(minutes=MINUTES + 5)
    recording, topic, expected = simulate_and_record(services, settings, tmp_path_factory.mktemp("matrix"), start,
                                                     MINUTES, ["counter_reset:small:pdu-h1-r01-k01@5m",
                                                               "hot_spot:small:h1-r02-k01@3m+5m"])
    assert any("window=15m" in k for k in expected), "the run must close a 15-minute roll-up"
    transitions = expected_transitions(recording, settings.topics.telemetry_partitions)
    assert {new for _, _, _, new in transitions} >= {"pending", "firing", "inactive"}
    return start, recording, topic, expected, transitions


def run_replay(services, base: Settings, recorded, speed: float | None, workers: int, name: str, tmp_path: Path,
               kill_after_s: float | None = None) -> dict[str, dict]:
    start, recording, topic, expected, transitions = recorded
    with isolated(services, base, name) as settings, \
            running_pipeline(settings, log_dir=tmp_path / name, workers=workers) as pipeline:
        replayer = threading.Thread(target=replay, args=(access(settings, "admin"), recording),
                                    kwargs={"speed": speed, "topic_map": {topic: settings.topics.telemetry}})
        replayer.start()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            pipeline.kill("streams-1")  # mid-window: no goodbye, no commit
            time.sleep(2)
            pipeline.restart("streams-1")
        replayer.join(timeout=300)
        results = wait_for_results(settings, start, len(expected), pipeline.check_alive, timeout_s=400)
        return results, read_transitions(settings)


@pytest.mark.parametrize("speed, workers, kill", [
    (None, 1, None),  # flat out, one worker
    (20.0, 2, None),  # paced, two workers sharing one site
    (None, 3, None),  # flat out, three workers
    (10.0, 2, 25.0),  # a worker killed mid-window and restarted
], ids=["max-1w", "20x-2w", "max-3w", "10x-2w-kill9"])
def test_results_equal_the_offline_reference(services: LocalServices, settings: Settings, tmp_path: Path, recorded,
                                             speed, workers, kill) -> None:
    found, transitions = run_replay(services, settings, recorded, speed, workers, f"{workers}w", tmp_path, kill)
    assert_equal_to_reference(found, recorded[3])
    assert transitions == recorded[4]
