"""A simulated small site run through the whole pipeline in a sandbox, for the tests of what SREs
and readers of reports get back (`dcpulse query`, `dcpulse report`), and the straightforward
Flux those tests check the answers against."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.recording import replay
from dcpulse.producers.scenario_args import current_minute
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.query import flux_time, read_rows
from dcpulse.views.queries import Span
from tests.integration.support import (
    expected_transitions,
    isolated,
    recorded_samples,
    simulate_and_record,
    wait_for_raw_points,
    wait_for_results,
)

MINUTES = 10
HOT_RACK = "h1-r02-k01"
FAULTS = [f"hot_spot:small:{HOT_RACK}@2m+5m", "cdu_pump_failure:small@6m+3m", "counter_reset:small:pdu-h1-r01-k01@4m"]


@dataclass(frozen=True)
class SimulatedSite:
    settings: Settings
    span: Span  # covers every window and sample of the run

    def flux(self, query: str) -> list[dict]:
        s = self.settings
        return read_rows(s.influx.url, influx_token(s, "read"), s.influx.org, query)

    def where(self, bucket: str, condition: str) -> str:
        """Flux: the bucket's points in the span that match `condition`."""
        return (f'from(bucket: "{bucket}") |> range(start: {flux_time(self.span.start)}, '
                f"stop: {flux_time(self.span.stop)}) |> filter(fn: (r) => {condition})")

    def range_args(self) -> list[str]:
        return ["--site", "small", "--since", self.span.start.isoformat(), "--until", self.span.stop.isoformat()]


@contextmanager
def simulated_site(services: LocalServices, base: Settings, tmp_path: Path) -> Iterator[SimulatedSite]:
    """Simulate and record the small preset with FAULTS, replay it through `dcpulse streams` and
    `dcpulse sink` into a sandbox, wait until results, raw samples and alerts are all stored, stop
    the pipeline, and yield the sandbox (its DCPULSE_* environment set) until the caller is done."""
    start = current_minute() - timedelta(minutes=MINUTES + 5)
    recording, topic, expected = simulate_and_record(services, base, tmp_path, start, MINUTES, FAULTS)
    partitions = base.topics.telemetry_partitions
    transitions = len(expected_transitions(recording, partitions))
    with isolated(services, base, "views") as settings:
        site = SimulatedSite(settings, Span(start, start + timedelta(minutes=MINUTES + 1)))
        with running_pipeline(settings, log_dir=tmp_path / "pipeline") as pipeline:
            replay(access(settings, "admin"), recording, speed=None, topic_map={topic: settings.topics.telemetry})
            wait_for_results(settings, start, len(expected), pipeline.check_alive)
            wait_for_raw_points(settings, start, recorded_samples(recording, partitions), pipeline.check_alive)
            _wait_for_alert_log(site, transitions, pipeline.check_alive)
        yield site


def _wait_for_alert_log(site: SimulatedSite, transitions: int, check, timeout_s: float = 120) -> None:
    """Until the alert log holds a point per transition the offline reference raises."""
    deadline = time.monotonic() + timeout_s
    query = site.where(site.settings.influx.buckets.alerts, 'r._measurement == "alert" and r._field == "state"')
    while len(site.flux(query)) < transitions:
        assert time.monotonic() < deadline, f"the alert log has not reached {transitions} transitions"
        check()
        time.sleep(2)
    time.sleep(3)  # a suppression rewritten late lands in place, not as a new point


def dcpulse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh process: settings are read once per process (get_settings is cached),
    so the sandbox's environment has to reach a new one."""
    return subprocess.run([sys.executable, "-m", "dcpulse.cli", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def fails(*args: str, env: dict[str, str] | None = None) -> str:
    """The one line a command that cannot answer prints; exit code 1, no traceback."""
    done = dcpulse(*args, env=env)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    return output


def register_increase(samples: list[tuple[datetime, float]]) -> float:
    """A cumulative register's increase: the sum of its rises, a drop being a reset to zero."""
    total, previous = 0.0, None
    for _, value in sorted(samples):
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return total


def energy_by_role(site: SimulatedSite) -> dict[str, float]:
    """Facility, UPS input, PDU output and cooling energy from every register sample in the span."""
    roles = {("facility_meter", "energy_kwh"): "facility", ("ups", "input_energy_kwh"): "ups_input",
             ("pdu", "energy_kwh"): "it"}
    cooling = {"cdu", "crah", "chiller", "cooling_tower", "dry_cooler", "pump"}
    series: dict[tuple[str, str, str], list[tuple[datetime, float]]] = {}
    rows = site.flux(site.where(site.settings.influx.buckets.raw, 'r.site == "small" and '
                                '(r._field == "energy_kwh" or r._field == "input_energy_kwh")'))
    for r in rows:
        series.setdefault((r["_measurement"], r["device"], r["_field"]), []).append((r["_time"], r["_value"]))
    totals: dict[str, float] = {}
    for (kind, _, field), samples in series.items():
        role = "cooling" if kind in cooling and field == "energy_kwh" else roles.get((kind, field))
        if role:
            totals[role] = totals.get(role, 0.0) + register_increase(samples)
    return totals
