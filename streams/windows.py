"""Event-time windows for PUE, efficiency and utilisation: one engine, any key-value store.

The Faust agent runs it over changelog-backed tables; the offline reference runs it over a
dict. Both see the same records in the same per-partition order and get the same numbers:

- Lateness is judged per source partition: a record more than `allowed_lateness_s` older than
  the newest event time already seen on its own source partition is late (counted, left out
  of windows; it still reaches the raw bucket).
- A site's window closes when every source partition feeding that site has moved
  `allowed_lateness_s` past the window's end (watermark = min over sources - lateness). Any
  record for a closed window is therefore late by the rule above, so what a window contains
  never depends on how fast or in what interleaving the partitions were read. The Kafka key is
  the site, so normally one source feeds a site; a source `idle_source_s` behind the newest is
  ignored so stale history can never hold a site's windows open.
- Sums use math.fsum over name-sorted devices: exact, so float results are bit-identical.
"""

from __future__ import annotations

import math
from bisect import insort
from functools import lru_cache
from collections import defaultdict
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from dcpulse.contract import AnalyticsPoint, Telemetry
from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.energy import (EnergySum, WindowTotals, integrate_power, percentile, pue, quality, ratio,
                                    rollup, sum_meters, window_energy)

# Which cumulative registers each device kind carries, and what they mean.
REGISTERS = {
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
POWER_GAUGES = {
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
# PUE category -> (device kind, register) metering IT energy there.
IT_METERS = {"1": ("ups", "output_energy_kwh"), "2": ("pdu", "energy_kwh"), "3": ("server", "energy_kwh")}
WATER_CP = 4186.0


def window_label(seconds: float) -> str:
    return f"{int(seconds // 3600)}h" if seconds % 3600 == 0 else f"{int(seconds // 60)}m"


class WindowEngine:
    def __init__(self, settings: AnalyticsSettings, store: MutableMapping[str, Any]) -> None:
        self.cfg = settings
        self.store = store
        self.late = 0
        self.redelivered = 0

    # ---- ingest -------------------------------------------------------------------------
    def process(self, src: str, event: Telemetry) -> list[AnalyticsPoint]:
        """Take one validated record from source partition `src`; return closed-window results."""
        site, ts = event.site, event.ts.timestamp()
        wm_key = f"{site}|wm"
        wm = self.store.get(wm_key) or {"src": {}, "closed": None}
        newest = wm["src"].get(src)
        w = self.cfg.window_s
        if wm["closed"] is None:
            wm["closed"] = math.floor(ts / w) * w
        if (newest is not None and ts < newest - self.cfg.allowed_lateness_s) or ts < wm["closed"]:
            self.late += 1
        elif not self._add(event, ts):
            self.redelivered += 1
        wm["src"][src] = ts if newest is None else max(newest, ts)
        results = self._close_due(site, wm)
        self.store[wm_key] = wm
        return results

    def _add(self, event: Telemetry, ts: float) -> bool:
        """Fold one sample into its device's state; False for a sample not newer than the last
        one folded (a redelivery after a restart: a device's samples arrive in order)."""
        site, device, kind = event.site, event.device, event.kind.value
        key = f"{site}|d|{device}"
        state = self.store.get(key)
        if state is not None and ts <= state["seen"]:
            return False
        if state is None:
            state = {"kind": kind, "hall": event.hall, "rack": event.rack, "reg": {}, "win": {}}
            reg_key = f"{site}|devices"
            devices = self.store.get(reg_key) or []
            insort(devices, device)
            self.store[reg_key] = devices
        state["seen"] = ts
        m = event.metrics
        for name in REGISTERS.get(kind, ()):
            if name in m:
                insort(state["reg"].setdefault(name, []), [ts, m[name]])
            elif (gauge := POWER_GAUGES.get((kind, name))) and gauge[0] in m:  # no register: its power
                insort(state.setdefault("pow", {}).setdefault(name, []), [ts, m[gauge[0]] * gauge[1]])
        start = str(math.floor(ts / self.cfg.window_s) * self.cfg.window_s)
        agg = state["win"].setdefault(start, {})
        if kind == "server":
            util_names, power_names = _accelerator_metrics(tuple(m))
            agg.setdefault("util", []).extend(m[k] for k in util_names)
            _acc(agg, "cpu", m.get("cpu_util"))
            _acc(agg, "acc_w", math.fsum(m[k] for k in power_names))
            _acc(agg, "cpu_w", m.get("cpu_power_w"))
        elif kind == "pdu":
            _acc(agg, "kw", m.get("power_kw"))
            if "rated_kw" in m:
                agg["rated_kw"] = m["rated_kw"]
        elif kind == "cdu" and {"flow_l_min", "supply_c", "return_c"} <= m.keys():
            heat_kw = m["flow_l_min"] / 60.0 * WATER_CP * (m["return_c"] - m["supply_c"]) / 1000.0
            _acc(agg, "heat_kw", heat_kw)
            if "capacity_kw" in m:
                agg["capacity_kw"] = m["capacity_kw"]
        self.store[key] = state
        return True

    # ---- closing ------------------------------------------------------------------------
    def _close_due(self, site: str, wm: dict) -> list[AnalyticsPoint]:
        w = self.cfg.window_s
        # A source far behind the newest one has gone quiet for this site (it only ever held
        # stale data, e.g. from before the site was re-keyed): it must not hold windows open.
        newest = max(wm["src"].values())
        active = [t for t in wm["src"].values() if t >= newest - self.cfg.idle_source_s]
        watermark = min(active) - self.cfg.allowed_lateness_s
        results: list[AnalyticsPoint] = []
        if watermark - wm["closed"] > self.cfg.max_gap_windows * w:  # a jump in time: do not emit a year of empties
            wm["closed"] = math.floor((watermark - w) / w) * w
        while wm["closed"] + w <= watermark:
            results.extend(self._close(site, wm["closed"], wm["closed"] + w))
            wm["closed"] += w
        return results

    def _devices(self, site: str) -> list[tuple[str, dict]]:
        return [(d, self.store[f"{site}|d|{d}"]) for d in self.store.get(f"{site}|devices") or []]

    def _close(self, site: str, start: float, end: float) -> list[AnalyticsPoint]:
        devices = [(d, s) for d, s in self._devices(site) if s["seen"] >= start - self.cfg.meter_forget_s]
        if not any(s["seen"] >= start for _, s in devices):
            self._prune(site, end)
            return []
        energy: dict[tuple[str, str], float | None] = {}
        for name, state in devices:
            for register, samples in state["reg"].items():
                energy[(name, register)] = window_energy([tuple(x) for x in samples], start, end)
            for register, samples in state.get("pow", {}).items():
                if energy.get((name, register)) is None:
                    energy[(name, register)] = _integrated(samples, start, end)
        by_kind: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for name, state in devices:
            by_kind[state["kind"]].append((name, state))

        def total(kind: str, register: str, members: list[tuple[str, dict]] | None = None) -> EnergySum:
            chosen = by_kind.get(kind, []) if members is None else [x for x in members if x[1]["kind"] == kind]
            return sum_meters([energy.get((n, register)) for n, _ in chosen], len(chosen))

        t = _time(start)
        label = window_label(self.cfg.window_s)
        facility = total("facility_meter", "energy_kwh")
        points: list[AnalyticsPoint] = []
        minutes = self.store.get(f"{site}|minutes") or {}
        per_category: dict[str, tuple[float | None, EnergySum]] = {}
        for category, (kind, register) in IT_METERS.items():
            it = total(kind, register)
            value, coverage = pue(facility, it)
            per_category[category] = (value, it)
            if it.expected == 0:
                continue  # the site does not meter at this level
            points.append(self._pue_point(site, category, label, t, value, facility.kwh, it, coverage))
            minutes.setdefault(category, []).append([start, facility.kwh, it.kwh, coverage])
        points.extend(self._rollups(site, minutes, end))
        self.store[f"{site}|minutes"] = minutes
        points.extend(self._efficiency(site, label, t, start, end, facility, per_category, total, by_kind, energy))
        points.extend(self._utilisation(site, label, t, start, by_kind))
        self._prune(site, end)
        return points

    def _pue_point(self, site: str, category: str, label: str, t: datetime, value: float | None,
                   facility_kwh: float, it: EnergySum, coverage: float) -> AnalyticsPoint:
        fields: dict[str, float | str] = {
            "facility_kwh": facility_kwh, "it_kwh": it.kwh, "coverage": coverage,
            "quality": quality(coverage, self.cfg.coverage_complete, self.cfg.coverage_usable),
            "meters_present": float(it.present), "meters_expected": float(it.expected),
        }
        if value is not None:
            fields["pue"] = value
        return AnalyticsPoint(measurement="pue", tags={"site": site, "category": category, "window": label},
                              fields=fields, time=t)

    def _rollups(self, site: str, minutes: dict, end: float) -> list[AnalyticsPoint]:
        points = []
        for length in self.cfg.rollups_s:
            if end % length:
                continue
            for category, rows in minutes.items():
                totals = rollup([WindowTotals(*row) for row in rows], end - length, length, self.cfg.window_s)
                value = ratio(totals.facility_kwh, totals.it_kwh) if totals.coverage > 0 else None
                fields: dict[str, float | str] = {
                    "facility_kwh": totals.facility_kwh, "it_kwh": totals.it_kwh, "coverage": totals.coverage,
                    "quality": quality(totals.coverage, self.cfg.coverage_complete, self.cfg.coverage_usable)}
                if value is not None:
                    fields["pue"] = value
                points.append(AnalyticsPoint(measurement="pue", tags={"site": site, "category": category,
                                                                      "window": window_label(length)},
                                             fields=fields, time=_time(end - length)))
        keep_from = end - max(self.cfg.rollups_s, default=0)
        for category in minutes:
            minutes[category] = [row for row in minutes[category] if row[0] >= keep_from]
        return points

    def _efficiency(self, site, label, t, start, end, facility, per_category, total, by_kind, energy):
        points = []
        halls = sorted({s["hall"] for _, s in by_kind.get("pdu", []) if s["hall"]})
        for hall in halls:
            members = [x for kind in ("pdu", "ups", "cdu", "crah") for x in by_kind.get(kind, []) if x[1]["hall"] == hall]
            it = total("pdu", "energy_kwh", members)
            infra = [total("ups", "input_energy_kwh", members), total("cdu", "energy_kwh", members),
                     total("crah", "energy_kwh", members)]
            coverage = min([it.coverage] + [e.coverage for e in infra if e.expected])
            fields: dict[str, float | str] = {"it_kwh": it.kwh, "coverage": coverage,
                                              "quality": quality(coverage, self.cfg.coverage_complete,
                                                                 self.cfg.coverage_usable)}
            # pPUE = (IT + the hall's own cooling and distribution) / IT; UPS input covers IT + losses.
            if it.kwh > 0 and infra[0].present:
                zone = math.fsum(e.kwh for e in infra)
                fields["ppue"] = zone / it.kwh
                fields["infra_kwh"] = zone - it.kwh
            points.append(AnalyticsPoint(measurement="ppue", tags={"site": site, "hall": hall, "window": label},
                                         fields=fields, time=t))
        fields = {}
        water = total("water_meter", "volume_l")
        it1 = per_category["1"][1]
        if water.present and it1.kwh > 0:
            fields["water_l"] = water.kwh
            fields["wue_l_per_kwh"] = water.kwh / it1.kwh
        servers = by_kind.get("server", [])
        # Compute components (accelerators + CPUs/memory) from their power gauges, over the
        # servers whose input energy is known, so both sides of ITUE cover the same servers.
        compute_kwh = math.fsum(
            (_mean(state["win"].get(str(start), {}), "acc_w") + _mean(state["win"].get(str(start), {}), "cpu_w"))
            * (end - start) / 3.6e6
            for name, state in servers if energy.get((name, "energy_kwh")) is not None)
        it3 = per_category["3"][1]
        if compute_kwh > 0 and it3.kwh > 0:
            fields["itue"] = it3.kwh / compute_kwh
            if per_category["3"][0] is not None:
                fields["tue"] = fields["itue"] * per_category["3"][0]
        if fields:
            points.append(AnalyticsPoint(measurement="site_efficiency", tags={"site": site, "window": label},
                                         fields=fields, time=t))
        return points

    def _utilisation(self, site: str, label: str, t: datetime, start: float,
                     by_kind: dict[str, list[tuple[str, dict]]]) -> list[AnalyticsPoint]:
        key = str(start)
        groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for kind in ("server", "pdu", "cdu"):
            for _, state in by_kind.get(kind, []):
                agg = state["win"].get(key)
                if not agg:
                    continue
                for level, entity in (("rack", state["rack"]), ("hall", state["hall"]), ("site", site)):
                    if entity is None:
                        continue
                    g = groups[(level, entity)]
                    g["hall"].append(state["hall"])
                    if kind == "server":
                        g["util"].extend(agg.get("util", []))
                        g["cpu"].append(agg.get("cpu", [0.0, 0]))
                    elif kind == "pdu":
                        g["kw"].append(_mean(agg, "kw"))
                        g["rated"].append(agg.get("rated_kw", 0.0))
                    else:
                        g["heat"].append(_mean(agg, "heat_kw"))
                        g["capacity"].append(agg.get("capacity_kw", 0.0))
        points = []
        for (level, entity), g in sorted(groups.items()):
            fields: dict[str, float | str] = {}
            if g["util"]:
                fields.update(acc_util_mean=math.fsum(g["util"]) / len(g["util"]),
                              acc_util_p95=percentile(g["util"], 95), acc_util_max=max(g["util"]),
                              acc_samples=float(len(g["util"])))
            cpu_n = sum(n for _, n in g["cpu"])
            if cpu_n:
                fields["cpu_util_mean"] = math.fsum(s for s, _ in g["cpu"]) / cpu_n
            if g["kw"]:
                fields["power_kw"] = math.fsum(g["kw"])
                rated = math.fsum(g["rated"])
                if rated > 0:
                    fields.update(provisioned_kw=rated, power_ratio=fields["power_kw"] / rated)
            if g["heat"]:
                fields["heat_kw"] = math.fsum(g["heat"])
                capacity = math.fsum(g["capacity"])
                if capacity > 0:
                    fields.update(cdu_capacity_kw=capacity, heat_ratio=fields["heat_kw"] / capacity)
            if not fields:
                continue
            tags = {"site": site, "level": level, "entity": entity, "window": label}
            if level == "rack" and g["hall"][0]:
                tags["hall"] = g["hall"][0]
            points.append(AnalyticsPoint(measurement="utilisation", tags=tags, fields=fields, time=t))
        return points

    def _prune(self, site: str, end: float) -> None:
        """Drop what closed windows no longer need: keep each register's last sample before
        `end` (the next window interpolates from it) and forget long-silent devices."""
        devices = self.store.get(f"{site}|devices") or []
        keep = []
        for name in devices:
            key = f"{site}|d|{name}"
            state = self.store[key]
            if state["seen"] < end - self.cfg.meter_forget_s:
                del self.store[key]
                continue
            keep.append(name)
            for series in (state["reg"], state.get("pow", {})):
                for register, samples in series.items():
                    before = [s for s in samples if s[0] < end]
                    series[register] = before[-1:] + [s for s in samples if s[0] >= end]
            state["win"] = {k: v for k, v in state["win"].items() if float(k) >= end}
            self.store[key] = state
        if len(keep) != len(devices):
            self.store[f"{site}|devices"] = keep


@lru_cache(maxsize=64)
def _accelerator_metrics(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(acc*_util names, acc*_power_w names) of a server message layout: layouts repeat."""
    accs = [n for n in names if n.startswith("acc")]
    return tuple(n for n in accs if n.endswith("_util")), tuple(n for n in accs if n.endswith("_power_w"))


def _integrated(samples: list[list[float]], start: float, end: float) -> float | None:
    """A power gauge's energy over the window, or None unless its samples span all of it (like
    a register whose boundaries are not bracketed)."""
    kwh, covered = integrate_power([(t, p) for t, p in samples], start, end)
    return kwh if covered >= end - start else None


def _acc(agg: dict, name: str, value: float | None) -> None:
    if value is None:
        return
    total, count = agg.get(name, [0.0, 0])
    agg[name] = [total + value, count + 1]


def _mean(agg: dict, name: str) -> float:
    total, count = agg.get(name, [0.0, 0])
    return total / count if count else 0.0


def _time(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)
