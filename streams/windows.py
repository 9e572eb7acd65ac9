"""Per-partition window work (pure): fold valid samples into their device's state, and on a
window's close turn the site's devices on this partition into final rack results and one
`SitePartial` for the site-level combiner (streams/combine.py).

Everything here is about one raw partition and the devices whose agents it carries. Times are
integer epoch milliseconds. Sums use math.fsum over name-sorted devices, so the same records
in the same order give bit-identical results.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import Any

from dcpulse.contract import PARTIAL_SCHEMA, AnalyticsPoint, Sample
from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.energy import integrate_power, window_energy
from dcpulse.streams.measures import Usage, point, usage_fields, window_label

# Which cumulative registers each device kind carries, and what they mean.
REGISTERS: dict[str, tuple[str, ...]] = {
    "facility_meter": ("energy_kwh",),
    "ups": ("output_energy_kwh", "input_energy_kwh"),
    "pdu": ("energy_kwh",),
    "server": ("energy_kwh",),
    "cdu": ("energy_kwh",),
    "crah": ("energy_kwh",),
    "chiller": ("energy_kwh",),
    "cooling_tower": ("energy_kwh",),
    "dry_cooler": ("energy_kwh",),
    "pump": ("energy_kwh",),
    "water_meter": ("volume_l",),
}
# Where a device has no register, its power gauge: (kind, register) -> (gauge metric, kW per unit).
POWER_GAUGES: dict[tuple[str, str], tuple[str, float]] = {
    ("facility_meter", "energy_kwh"): ("power_kw", 1.0),
    ("ups", "output_energy_kwh"): ("output_power_kw", 1.0),
    ("ups", "input_energy_kwh"): ("input_power_kw", 1.0),
    ("pdu", "energy_kwh"): ("power_kw", 1.0),
    ("server", "energy_kwh"): ("power_w", 1e-3),
    ("cdu", "energy_kwh"): ("power_kw", 1.0),
    ("crah", "energy_kwh"): ("fan_power_kw", 1.0),
    ("chiller", "energy_kwh"): ("power_kw", 1.0),
    ("cooling_tower", "energy_kwh"): ("fan_power_kw", 1.0),
    ("dry_cooler", "energy_kwh"): ("fan_power_kw", 1.0),
    ("pump", "energy_kwh"): ("power_kw", 1.0),
}
# The partial sums the combiner needs: group -> (device kind, register). Hall-level groups are
# summed per hall (`<group>/<hall>`), site-level ones once.
HALL_ENERGIES = {"ups_out": ("ups", "output_energy_kwh"), "ups_in": ("ups", "input_energy_kwh"),
                 "pdu": ("pdu", "energy_kwh"), "server": ("server", "energy_kwh"),
                 "cdu": ("cdu", "energy_kwh"), "crah": ("crah", "energy_kwh")}
SITE_ENERGIES = {"facility": ("facility_meter", "energy_kwh"), "water": ("water_meter", "volume_l")}
WATER_CP = 4186.0  # J/(kg K)
MS_PER_HOUR = 3_600_000


@dataclass(slots=True)
class Gauges:
    """One device's gauges over one window: running sums and counts, and last ratings."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    util: dict[int, int] = field(default_factory=dict)  # accelerator utilisation, permille -> samples
    ratings: dict[str, float] = field(default_factory=dict)  # rated_kw, capacity_kw

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> float:
        n = self.counts.get(name, 0)
        return self.sums[name] / n if n else 0.0

    def to_json(self) -> list:
        return [self.sums, self.counts, sorted(self.util.items()), self.ratings]

    @classmethod
    def from_json(cls, data: list) -> Gauges:
        sums, counts, util, ratings = data
        return cls(sums, counts, {int(k): int(n) for k, n in util}, ratings)


@dataclass(slots=True)
class DeviceState:
    """What a partition keeps of one device: its identity, its last accepted (seq, ts) for the
    duplicate rule, register (and power-gauge) samples around open windows, open windows' gauges."""

    kind: str
    hall: str | None
    rack: str | None
    seq: int
    ts_ms: int
    registers: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    power: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # register -> (t, kW)
    windows: dict[int, Gauges] = field(default_factory=dict)  # window start -> gauges
    supply: tuple[str | None, str | None, str | None] = (None, None, None)  # row, cdu, feed: for its alerts
    # Stuck-sensor evidence: a digest of the last metrics and since when they have not changed.
    digest: int = 0
    same_since_ms: int = -1

    def to_json(self) -> list:
        return [self.kind, self.hall, self.rack, self.seq, self.ts_ms, self.registers, self.power,
                [[start, g.to_json()] for start, g in self.windows.items()], list(self.supply), self.digest,
                self.same_since_ms]

    @classmethod
    def from_json(cls, data: list) -> DeviceState:
        if len(data) == 8:  # checkpointed before devices kept their supply and stuck-value evidence
            data = [*data, [None, None, None], 0, -1]
        kind, hall, rack, seq, ts_ms, registers, power, windows, (row, cdu, feed), digest, same_since_ms = data
        return cls(kind, hall, rack, seq, ts_ms,
                   {k: [(int(t), v) for t, v in s] for k, s in registers.items()},
                   {k: [(int(t), v) for t, v in s] for k, s in power.items()},
                   {int(start): Gauges.from_json(g) for start, g in windows}, (row, cdu, feed), digest, same_since_ms)

    def note_values(self, ts_ms: int, metrics: dict[str, float]) -> None:
        """Track how long the metrics have kept exactly the same values (a stuck sensor)."""
        digest = hash(tuple(metrics.values()))  # floats hash the same in every process (str would not)
        if digest != self.digest or self.same_since_ms < 0:
            self.digest, self.same_since_ms = digest, ts_ms


def new_device(sample: Sample) -> DeviceState:
    return DeviceState(sample.kind.value, sample.hall, sample.rack, -1, -1, supply=(sample.row, sample.cdu, sample.feed))


def _values(names: list[str]) -> Callable[[dict[str, float]], tuple[float, ...]]:
    if not names:
        return lambda metrics: ()
    get = itemgetter(*names)
    return get if len(names) > 1 else lambda metrics: (get(metrics),)


@lru_cache(maxsize=64)
def _accelerator_metrics(names: tuple[str, ...]) -> tuple[Callable[[dict[str, float]], tuple[float, ...]], ...]:
    """Readers of (acc*_util values, acc*_power_w values) of a server message layout: layouts repeat."""
    accs = [n for n in names if n.startswith("acc")]
    return _values([n for n in accs if n.endswith("_util")]), _values([n for n in accs if n.endswith("_power_w")])


def fold(state: DeviceState, ts_ms: int, metrics: dict[str, float], window_ms: int) -> None:
    """Add one valid, in-window sample to its device's state."""
    kind = state.kind
    for name in REGISTERS.get(kind, ()):
        if name in metrics:
            insort(state.registers.setdefault(name, []), (ts_ms, metrics[name]))
        elif (gauge := POWER_GAUGES.get((kind, name))) and gauge[0] in metrics:  # no register: its power
            insort(state.power.setdefault(name, []), (ts_ms, metrics[gauge[0]] * gauge[1]))
    start = ts_ms - ts_ms % window_ms
    gauges = state.windows.get(start)
    if gauges is None:
        gauges = state.windows[start] = Gauges()
    if kind == "server":
        utils, powers = _accelerator_metrics(tuple(metrics))
        util = gauges.util
        for value in utils(metrics):
            permille = round(value * 1000)
            util[permille] = util.get(permille, 0) + 1
        if "cpu_util" in metrics:
            gauges.add("cpu_util", metrics["cpu_util"])
        gauges.add("acc_w", math.fsum(powers(metrics)))
        if "cpu_power_w" in metrics:
            gauges.add("cpu_w", metrics["cpu_power_w"])
    elif kind == "pdu":
        if "power_kw" in metrics:
            gauges.add("kw", metrics["power_kw"])
        if "rated_kw" in metrics:
            gauges.ratings["rated_kw"] = metrics["rated_kw"]
    elif kind == "cdu" and (heat := cdu_heat_kw(metrics)) is not None:
        gauges.add("heat_kw", heat)
        if "capacity_kw" in metrics:
            gauges.ratings["capacity_kw"] = metrics["capacity_kw"]


def cdu_heat_kw(metrics: dict[str, float]) -> float | None:
    """Heat a CDU's loop carries (kW): flow x cp x (return - supply); None without its inputs."""
    try:
        return metrics["flow_l_min"] / 60.0 * WATER_CP * (metrics["return_c"] - metrics["supply_c"]) / 1000.0
    except KeyError:
        return None


@dataclass(slots=True)
class EnergyPart:
    """One group's meters on one partition over one window."""

    kwh: float = 0.0
    present: int = 0  # meters whose energy could be computed
    expected: int = 0  # meters known here

    def to_json(self) -> list:
        return [self.kwh, self.present, self.expected]


@dataclass(slots=True)
class SitePartial:
    """What one raw partition contributes to a site's window: partial sums the combiner adds
    up in partition order. Every partition sends one per site and closed window, empty or not."""

    site: str
    start_ms: int
    window_ms: int
    partition: int
    partitions: int  # how many the combiner waits for
    active: int = 0  # devices here that reported in this window
    energies: dict[str, EnergyPart] = field(default_factory=dict)  # "<group>" or "<group>/<hall>"
    compute_kwh: float = 0.0  # accelerator + CPU gauges over the servers whose energy is known
    halls: dict[str, Usage] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": PARTIAL_SCHEMA, "site": self.site, "start_ms": self.start_ms,
                "window_ms": self.window_ms, "partition": self.partition, "partitions": self.partitions,
                "active": self.active,
                "energies": {k: v.to_json() for k, v in self.energies.items()}, "compute_kwh": self.compute_kwh,
                "halls": {k: v.to_json() for k, v in self.halls.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SitePartial:
        return cls(d["site"], d["start_ms"], d["window_ms"], d["partition"], d["partitions"], d["active"],
                   {k: EnergyPart(*v) for k, v in d["energies"].items()}, d["compute_kwh"],
                   {k: Usage.from_json(v) for k, v in d["halls"].items()})


def device_energy(state: DeviceState, register: str, start: int, end: int) -> float | None:
    """A device's energy over the window from its register, else from its integrated power
    gauge; None unless the samples bracket (or span) the whole window."""
    samples = state.registers.get(register)
    if samples:
        return window_energy(samples, start, end)
    power = state.power.get(register)
    if power:
        kwh, covered = integrate_power(power, start, end)
        return kwh if covered >= end - start else None
    return None


def close_window(site: str, devices: list[tuple[str, DeviceState]], start: int, partition: int,
                 partitions: int, cfg: AnalyticsSettings) -> tuple[list[AnalyticsPoint], SitePartial]:
    """Rack results (final: a rack's agent lives on one partition) and this partition's partial
    for the site's window [start, start + window). `devices`: the site's devices here, sorted
    by name, still expected (seen within `meter_forget_s`)."""
    window_ms = cfg.window_s * 1000
    end = start + window_ms
    partial = SitePartial(site, start, window_ms, partition, partitions)
    groups: dict[str, list[float | None]] = {}
    racks: dict[str, tuple[str | None, Usage]] = {}
    compute: list[float] = []
    wanted = {v: k for k, v in HALL_ENERGIES.items()} | {v: k for k, v in SITE_ENERGIES.items()}
    for _, state in devices:
        partial.active += state.ts_ms >= start
        for register in REGISTERS.get(state.kind, ()):
            group = wanted.get((state.kind, register))
            if group is None:
                continue
            energy = device_energy(state, register, start, end)
            name = group if group in SITE_ENERGIES else f"{group}/{state.hall}"
            groups.setdefault(name, []).append(energy)
            if state.kind == "server" and energy is not None and (g := state.windows.get(start)) is not None:
                compute.append((g.mean("acc_w") + g.mean("cpu_w")) * window_ms / MS_PER_HOUR / 1000)
        gauges = state.windows.get(start)
        if gauges is None or state.kind not in ("server", "pdu", "cdu") or state.hall is None:
            continue
        usage = _usage(state.kind, gauges)
        partial.halls.setdefault(state.hall, Usage()).add(usage)
        if state.rack is not None:
            racks.setdefault(state.rack, (state.hall, Usage()))[1].add(usage)
    for name, energies in sorted(groups.items()):
        present = [e for e in energies if e is not None]
        partial.energies[name] = EnergyPart(math.fsum(present), len(present), len(energies))
    partial.compute_kwh = math.fsum(compute)
    label = window_label(window_ms)
    points = []
    for rack, (hall, usage) in sorted(racks.items()):
        fields = usage_fields(usage)
        if fields:
            tags = {"site": site, "level": "rack", "entity": rack, "window": label}
            if hall:
                tags["hall"] = hall
            points.append(point("utilisation", tags, fields, start))
    return points, partial


def _usage(kind: str, g: Gauges) -> Usage:
    if kind == "server":
        return Usage(util=dict(g.util), cpu_sum=g.sums.get("cpu_util", 0.0), cpu_n=g.counts.get("cpu_util", 0))
    if kind == "pdu":
        return Usage(power_kw=g.mean("kw"), rated_kw=g.ratings.get("rated_kw", 0.0), pdus=1)
    return Usage(heat_kw=g.mean("heat_kw"), capacity_kw=g.ratings.get("capacity_kw", 0.0), cdus=1)


def prune(state: DeviceState, end: int) -> None:
    """Drop what closed windows no longer need: keep each register's last sample before `end`
    (the next window interpolates from it) and the gauges of windows still open."""
    for series in (state.registers, state.power):
        for register, samples in series.items():
            before = [s for s in samples if s[0] < end]
            series[register] = before[-1:] + [s for s in samples if s[0] >= end]
    state.windows = {start: g for start, g in state.windows.items() if start >= end}
