"""The simulated centre(s): workloads -> plant physics -> agents, on a simulated clock.

Everything random comes from one seeded numpy Generator per site (derived from the scenario
seed and the site's position), and timestamps come from the simulated clock, so the same
scenario and seed produce a byte-identical stream however fast it is run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from dcpulse.contract import Watermark, watermark_key
from dcpulse.producers.agents import Message, SiteAgents, watermark_ms
from dcpulse.producers.faults import faults_at, validate_targets
from dcpulse.producers.plant import SiteReadings, hall_layout, initial_state, step_site
from dcpulse.producers.sitemodel import Scenario, SiteSpec
from dcpulse.producers.workload import RackWorkload, server_utilisation


@dataclass
class SiteTruth:
    """The simulator's own energies, for ground-truth PUE (energy over energy, never a mean)."""

    facility_kwh: float = 0.0
    it_kwh: float = 0.0  # at UPS output (category 1)

    @property
    def pue(self) -> float:
        return self.facility_kwh / self.it_kwh if self.it_kwh else float("nan")


class SiteSimulator:
    def __init__(self, site: SiteSpec, scenario: Scenario, index: int) -> None:
        self.site = site
        self.faults = [f for f in scenario.faults if f.site == site.name]
        self.layouts = [hall_layout(h) for h in site.halls]
        validate_targets(self.faults, site.name, self.layouts)
        self.rng = np.random.Generator(np.random.PCG64([scenario.seed, index]))
        self.workloads = [RackWorkload(site.workload, h.racks, self.rng) for h in site.halls]
        self.state = initial_state(self.layouts, site)
        self.start_ms = int(scenario.start.timestamp() * 1000)
        self.start_hour = scenario.start.hour + scenario.start.minute / 60.0
        self.agents = SiteAgents(site, self.layouts, self.rng)
        self.watermark_key = watermark_key(site.name).encode()
        self.truth = SiteTruth()
        self.dt = site.sample_interval_s
        self.last: SiteReadings | None = None
        self.active_faults: list[str] = []

    def tick(self, t_s: float) -> Tick:
        """Advance the plant to t_s (end of an interval of dt): every agent's batch, then the watermark."""
        hour = (self.start_hour + t_s / 3600.0) % 24.0
        tick_faults = faults_at(self.faults, self.layouts, t_s, self.dt)
        utils, cpus = [], []
        for lay, wl in zip(self.layouts, self.workloads, strict=True):
            wl.step(t_s)
            rack_util = wl.rack_utilisation(t_s, hour)
            utils.append(server_utilisation(rack_util, lay.server_rack, lay.spec.server.accelerators, self.rng))
            cpus.append(np.clip(0.2 + 0.6 * rack_util[lay.server_rack] + self.rng.normal(0, 0.05, lay.server_rack.size), 0, 1))
        self.state, readings = step_site(self.site, self.layouts, self.state, utils, cpus, tick_faults.halls,
                                         hour, self.dt, chiller_tripped=tick_faults.chiller_tripped)
        self.truth.facility_kwh += readings.facility_w * self.dt / 3.6e6
        self.truth.it_kwh += readings.it_ups_out_w * self.dt / 3.6e6
        self.last = readings
        self.active_faults = tick_faults.active
        t_ms = self.start_ms + round(t_s * 1000)
        messages, samples = self.agents.emit(t_ms, self.dt, readings, tick_faults)
        return Tick(self.site.name, t_s, t_ms, messages, samples, (self.watermark_key, self._watermark(t_ms)))

    def _watermark(self, t_ms: int) -> bytes:
        ts = datetime.fromtimestamp(watermark_ms(t_ms, self.dt) / 1000, UTC)
        return Watermark(site=self.site.name, producer="simulate", ts=ts).to_bytes()


@dataclass(frozen=True)
class Tick:
    """One site's output for one tick: its agents' messages, then a watermark for every partition.
    `t_ms` (the tick's simulated time) is the Kafka timestamp of all of them."""

    site: str
    t_s: float
    t_ms: int
    messages: list[Message]
    samples: int
    watermark: Message


class ScenarioSimulator:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.sites = [SiteSimulator(site, scenario, i) for i, site in enumerate(scenario.sites)]

    def run(self, duration_s: float) -> Iterator[list[Tick]]:
        """Per simulated instant, in time order, the ticks of every site due then (in site order)."""
        next_t = [s.dt for s in self.sites]
        while (t := min(next_t)) <= duration_s:
            due = [i for i, n in enumerate(next_t) if n == t]
            yield [self.sites[i].tick(t) for i in due]
            for i in due:
                next_t[i] = t + self.sites[i].dt
