"""The fault matrix on the real servers: the small site through the whole pipeline (worker, sink,
notifier, Alertmanager) with each of the simulator's ten fault kinds in its own 10-minute slot.
Each raises its alert on its entity within the detection time docs/alerts.md states (event
time), and resolves after the fault ends; a pump failure's accelerator alerts are recorded as
inhibited by it; the transitions equal the offline reference; and the last fault, a pump failure
still under way when the run ends, is what Alertmanager's own API shows: the CDU alert active,
the accelerator alerts it causes suppressed by it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.recording import replay
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.alertmanager import AlertmanagerClient
from dcpulse.sinks.query import flux_string, read_rows
from tests.integration.support import (
    expected_transitions,
    isolated,
    read_transitions,
    simulate_and_record,
    wait_for_results,
)
from tests.unit.test_alerting import FAULT_MATRIX

pytestmark = pytest.mark.integration
SLOT_MIN, FAULT_MIN = 10, 4
LAST = len(FAULT_MATRIX)  # the pump failure left running at the end, in this slot
MINUTES = SLOT_MIN * LAST + 4


def _afternoon() -> datetime:
    """The latest 14:00 UTC at least MINUTES ago: the small site's chiller runs in the afternoon."""
    now = datetime.now(UTC)
    start = now.replace(hour=14, minute=0, second=0, microsecond=0)
    return start if start + timedelta(minutes=MINUTES + 5) < now else start - timedelta(days=1)


def _slot_start(start: datetime, slot: int) -> datetime:
    return start + timedelta(minutes=1 + SLOT_MIN * slot)


def _alert_log(settings: Settings, since: datetime) -> list[dict]:
    query = (f"from(bucket: {flux_string(settings.influx.buckets.alerts)})"
             f" |> range(start: {since.isoformat().replace('+00:00', 'Z')}, stop: 2100-01-01T00:00:00Z)"
             ' |> filter(fn: (r) => r._measurement == "alert")'
             ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    return read_rows(settings.influx.url, influx_token(settings, "read"), settings.influx.org, query)


@pytest.fixture(scope="module")
def run(services: LocalServices, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    start = _afternoon()
    faults = [f"{kind}:small@{1 + SLOT_MIN * slot}m+{FAULT_MIN}m" for slot, (kind, *_) in enumerate(FAULT_MATRIX)]
    faults.append(f"cdu_pump_failure:small@{1 + SLOT_MIN * LAST}m+30m")
    tmp = tmp_path_factory.mktemp("alert-faults")
    recording, topic, expected = simulate_and_record(services, settings, tmp, start, MINUTES, faults)
    with isolated(services, settings, "alerts") as sandboxed, \
            running_pipeline(sandboxed, log_dir=tmp / "pipeline") as pipeline:
        replay(access(sandboxed, "admin"), recording, speed=None, topic_map={topic: sandboxed.topics.telemetry})
        wait_for_results(sandboxed, start, len(expected), pipeline.check_alive, timeout_s=400)
        reference = expected_transitions(recording, sandboxed.topics.telemetry_partitions)
        transitions = read_transitions(sandboxed)
        time.sleep(5)  # the notifier posts within a second; the alert sink batches for half of one
        log = _alert_log(sandboxed, start - timedelta(hours=1))
        with AlertmanagerClient(sandboxed.alertmanager.url) as am:
            posted = am.alerts(filter=[f'pipeline="{sandboxed.topics.prefix}"'])
        yield start, reference, transitions, log, posted


def test_the_live_transitions_equal_the_offline_reference(run) -> None:
    _, reference, transitions, _, _ = run
    assert transitions == reference


@pytest.mark.parametrize("slot, kind, rule, entity, within_s", [(i, *row) for i, row in enumerate(FAULT_MATRIX)],
                         ids=[row[0] for row in FAULT_MATRIX])
def test_each_fault_raises_its_alert_on_its_entity_in_time_and_resolves(run, slot, kind, rule, entity,
                                                                        within_s) -> None:
    start, _, _, log, _ = run
    began = _slot_start(start, slot)
    rows = sorted((r for r in log if r["alertname"] == rule and r["device"] == entity
                   and began <= r["_time"] < began + timedelta(minutes=SLOT_MIN)), key=lambda r: r["_time"])
    firing = [r for r in rows if r["state"] == "firing" and r["old"] != "firing"]
    assert firing, f"{rule} on {entity} did not fire for {kind}"
    assert (firing[0]["_time"] - began).total_seconds() <= within_s
    assert rows[-1]["state"] == "inactive" and rows[-1]["resolved"], f"{rule} on {entity} did not resolve"
    # Derived inputs (stuck values, clocks) are judged at the site's watermark, which trails
    # the samples of its tick by about a second.
    assert rows[-1]["_time"] > began + timedelta(minutes=FAULT_MIN, seconds=-2)


def test_a_pump_failures_accelerator_alerts_are_recorded_as_inhibited_by_it(run) -> None:
    start, _, _, log, _ = run
    began = _slot_start(start, 0)
    slot = [r for r in log if began <= r["_time"] < began + timedelta(minutes=FAULT_MIN)]
    source = next(r for r in slot if r["alertname"] == "cdu_pump_redundancy_lost" and r["state"] == "firing")
    hot = [r for r in slot if r["alertname"].startswith("accelerator_") and r["state"] == "firing"]
    # Their transitions and the source's travel on different partitions: whichever the alert
    # book reads second records the suppression.
    suppressed = {r["fingerprint"] for r in hot if source["fingerprint"] in (r["inhibited_by"] or "").split(",")}
    assert hot and suppressed == {r["fingerprint"] for r in hot}
    assert {r["cause"] for r in hot} == {"cdu-h1-01"}


def test_alertmanager_shows_the_cdu_alert_active_and_what_it_causes_suppressed(run) -> None:
    *_, posted = run
    by_name: dict[str, list[dict]] = {}
    for alert in posted:
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    (cdu,) = by_name["cdu_pump_redundancy_lost"]
    assert cdu["status"]["state"] == "active" and cdu["labels"]["cdu"] == "cdu-h1-01"
    caused = [a for name, alerts in by_name.items() if name.startswith("accelerator_") for a in alerts]
    assert caused, f"no accelerator alert reached Alertmanager: {sorted(by_name)}"
    for alert in caused:
        assert alert["status"]["state"] == "suppressed"
        assert cdu["fingerprint"] in alert["status"]["inhibitedBy"]


def _cli(*args: str) -> list[dict]:
    """`dcpulse alerts ...` --json in a child process (it reads the sandbox's settings from the environment)."""
    done = subprocess.run([sys.executable, "-m", "dcpulse.cli", "alerts", *args, "--json"], capture_output=True,
                          text=True, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_dcpulse_alerts_lists_what_fires_with_its_suppression_and_the_history_of_a_rule(run) -> None:
    active = _cli("active", "--site", "small", "--since", "3d")
    pump = [a for a in active if a["alertname"] == "cdu_pump_redundancy_lost"]
    assert [a["device"] for a in pump] == ["cdu-h1-01"]
    hot = [a for a in active if a["alertname"].startswith("accelerator_")]
    assert hot and all("cdu_pump_redundancy_lost" in a["suppressed_by"] for a in hot)
    history = _cli("history", "--rule", "coolant_leak", "--since", "3d")
    assert [(r["old"], r["state"]) for r in history] == [("inactive", "firing"), ("firing", "keep_firing"),
                                                          ("keep_firing", "inactive")]
