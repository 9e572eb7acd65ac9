"""The site-level step (pure): combine every raw partition's `SitePartial` of a window into the
site's PUE (categories 1-3), pPUE per hall, WUE/ITUE/TUE and hall and site utilisation, plus
15-minute and 1-hour roll-ups.

A window is combined once all `partitions` partials are in: every partition sends one per
window (empty if it carries none of the site's agents), so completeness never depends on
timing, and combining in partition order makes the sums bit-identical however the partials
arrived. Partials of a window already combined (redeliveries) are ignored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from dcpulse.contract import AnalyticsPoint
from dcpulse.log import get_logger
from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.energy import EnergySum, WindowTotals, rollup
from dcpulse.streams.measures import (
    Quality,
    Usage,
    efficiency_fields,
    point,
    ppue_fields,
    pue_fields,
    usage_fields,
    window_label,
)
from dcpulse.streams.alerting import AlertEvent, RuleEngine, Where, decode_alert_entry
from dcpulse.streams.alertrules import Rule
from dcpulse.streams.state import OFFSET_KEY, PartitionState
from dcpulse.streams.windows import SitePartial

log = get_logger(__name__)

# The roll-up the `@pue_15m` alert input reads (emitted when `rollups_s` includes 900).
PUE_ALERT_WINDOW_MS = 900_000
PUE_ALERT_LABEL = window_label(PUE_ALERT_WINDOW_MS)
# PUE category -> the hall energy group metering IT there (UPS output, PDU outputs, server inputs).
IT_GROUPS = {"1": "ups_out", "2": "pdu", "3": "server"}


@dataclass(slots=True)
class SiteState:
    """The combiner's state of one site: partials of open windows, the next window to combine,
    and the recent windows' totals that roll-ups add up (series -> list)."""

    pending: dict[int, dict[int, SitePartial]] = field(default_factory=dict)  # start -> partition -> partial
    next_start_ms: int | None = None
    history: dict[str, list[WindowTotals]] = field(default_factory=dict)

    def to_json(self) -> list:
        return [[[start, [p.to_json() for p in parts.values()]] for start, parts in self.pending.items()],
                self.next_start_ms,
                {k: [[w.start, w.values, w.coverage] for w in rows] for k, rows in self.history.items()}]

    @classmethod
    def from_json(cls, data: list) -> SiteState:
        pending, next_start, history = data
        return cls({int(start): {p.partition: p for p in map(SitePartial.from_json, parts)} for start, parts in pending},
                   next_start,
                   {k: [WindowTotals(int(s), v, c) for s, v, c in rows] for k, rows in history.items()})


def add_partial(state: SiteState, partial: SitePartial, cfg: AnalyticsSettings) -> list[AnalyticsPoint]:
    """Take one partial; return the results of every window it completed."""
    if state.next_start_ms is not None and partial.start_ms < state.next_start_ms:
        return []  # that window was combined already
    state.pending.setdefault(partial.start_ms, {}).setdefault(partial.partition, partial)
    points: list[AnalyticsPoint] = []
    for start in sorted(state.pending):
        parts = state.pending[start]
        if len(parts) < next(iter(parts.values())).partitions:
            break  # windows complete in order: every partition sends its partials in window order
        del state.pending[start]
        state.next_start_ms = start + partial.window_ms
        points.extend(combine_window([parts[p] for p in sorted(parts)], state, cfg))
    return points


def _sum(parts: list[SitePartial], group: str) -> EnergySum:
    found = [p.energies[group] for p in parts if group in p.energies]
    return EnergySum(math.fsum(e.kwh for e in found), sum(e.present for e in found), sum(e.expected for e in found))


def _hall_sum(parts: list[SitePartial], group: str, halls: list[str]) -> EnergySum:
    sums = [_sum(parts, f"{group}/{hall}") for hall in halls]
    return EnergySum(math.fsum(s.kwh for s in sums), sum(s.present for s in sums), sum(s.expected for s in sums))


def combine_window(parts: list[SitePartial], state: SiteState, cfg: AnalyticsSettings) -> list[AnalyticsPoint]:
    """A site's results for one window from all partitions' partials (in partition order)."""
    first = parts[0]
    site, start, window_ms = first.site, first.start_ms, first.window_ms
    q = Quality(cfg.coverage_complete, cfg.coverage_usable)
    if not any(p.active for p in parts):  # no device of the site reported in this window
        return _rollups(site, state, {}, start + window_ms, window_ms, cfg, q)
    label = window_label(window_ms)
    halls = sorted({key.split("/", 1)[1] for p in parts for key in p.energies if "/" in key}
                   | {hall for p in parts for hall in p.halls})
    facility = _sum(parts, "facility")
    totals: dict[str, WindowTotals] = {}
    points: list[AnalyticsPoint] = []
    it: dict[str, EnergySum] = {}
    pue3: float | None = None
    for category, group in IT_GROUPS.items():
        it[category] = _hall_sum(parts, group, halls)
        if it[category].expected == 0:
            continue  # the site does not meter at this level
        values = {"facility_kwh": facility.kwh, "it_kwh": it[category].kwh, "facility_present": float(facility.present)}
        coverage = min(facility.coverage, it[category].coverage)
        fields = pue_fields(values, coverage, q)
        fields.update(meters_present=float(it[category].present), meters_expected=float(it[category].expected))
        if category == "3":
            pue3 = fields.get("pue")  # type: ignore[assignment]
        points.append(point("pue", {"site": site, "category": category, "window": label}, fields, start))
        totals[f"pue/{category}"] = WindowTotals(start, values, coverage)
    for hall in halls:
        hall_it = _sum(parts, f"pdu/{hall}")
        if hall_it.expected == 0:
            continue
        infra = [_sum(parts, f"{g}/{hall}") for g in ("ups_in", "cdu", "crah")]
        coverage = min([hall_it.coverage] + [e.coverage for e in infra if e.expected])
        values = {"it_kwh": hall_it.kwh, "zone_kwh": math.fsum(e.kwh for e in infra), "ups_present": float(infra[0].present)}
        points.append(point("ppue", {"site": site, "hall": hall, "window": label}, ppue_fields(values, coverage, q), start))
        totals[f"ppue/{hall}"] = WindowTotals(start, values, coverage)
    water = _sum(parts, "water")
    values = {"water_l": water.kwh, "water_present": float(water.present), "it1_kwh": it["1"].kwh,
              "it3_kwh": it["3"].kwh, "compute_kwh": math.fsum(p.compute_kwh for p in parts)}
    coverage = min(it["1"].coverage, it["3"].coverage)
    fields = efficiency_fields(values, coverage, q, pue3)
    if fields:
        points.append(point("site_efficiency", {"site": site, "window": label}, fields, start))
        totals["site_efficiency"] = WindowTotals(start, values, coverage)
    points.extend(_usage_points(site, parts, label, start))
    points.extend(_rollups(site, state, totals, start + window_ms, window_ms, cfg, q))
    return points


def _usage_points(site: str, parts: list[SitePartial], label: str, start: int) -> list[AnalyticsPoint]:
    halls: dict[str, Usage] = {}
    for p in parts:
        for hall, usage in p.halls.items():
            halls.setdefault(hall, Usage()).add(usage)
    whole = Usage()
    points = []
    for hall, usage in sorted(halls.items()):
        whole.add(usage)
        if fields := usage_fields(usage):
            points.append(point("utilisation", {"site": site, "level": "hall", "entity": hall, "window": label},
                                fields, start))
    if fields := usage_fields(whole):
        points.append(point("utilisation", {"site": site, "level": "site", "entity": site, "window": label},
                            fields, start))
    return points


def _rollups(site: str, state: SiteState, totals: dict[str, WindowTotals], end: int, window_ms: int,
             cfg: AnalyticsSettings, q: Quality) -> list[AnalyticsPoint]:
    """Append this window's totals to each series' history; at a roll-up boundary emit the
    roll-up of every series with the same field definitions as a window."""
    for series, row in totals.items():
        state.history.setdefault(series, []).append(row)
    lengths = [s * 1000 for s in cfg.rollups_s]
    keep_from = end - max(lengths, default=0)
    for series in list(state.history):
        state.history[series] = [w for w in state.history[series] if w.start >= keep_from]
        if not state.history[series]:
            del state.history[series]
    points = []
    for length in lengths:
        if end % length:
            continue
        label, start = window_label(length), end - length
        rolled = {series: rollup(rows, start, length, window_ms) for series, rows in sorted(state.history.items())}
        pue3 = None
        for series, r in rolled.items():
            kind, _, entity = series.partition("/")
            if kind == "pue":
                fields = pue_fields(r.values, r.coverage, q)
                pue3 = fields.get("pue") if entity == "3" else pue3
                points.append(point("pue", {"site": site, "category": entity, "window": label}, fields, start))
            elif kind == "ppue":
                points.append(point("ppue", {"site": site, "hall": entity, "window": label},
                                    ppue_fields(r.values, r.coverage, q), start))
        if "site_efficiency" in rolled:
            r = rolled["site_efficiency"]
            if fields := efficiency_fields(r.values, r.coverage, q, pue3):  # type: ignore[arg-type]
                points.append(point("site_efficiency", {"site": site, "window": label}, fields, start))
    return points



def site_key(site: str) -> str:
    """A site's combiner clock and roll-up history (its `SiteState` without pending partials)."""
    return f"site/{site}"


def pending_key(site: str, start_ms: int) -> str:
    """The partials in so far of one of a site's open windows. Stored apart from the site so
    that a checkpoint writes what changed, and no state value grows with the number of
    windows a slow partition keeps open (each is at most one partial per raw partition)."""
    return f"pending/{site}/{start_ms}"


def decode_site_state(key: str, data: Any) -> Any:
    if key.startswith("site/"):
        return SiteState.from_json(data)
    return decode_alert_entry(key, data) if key.startswith("alert") else data  # pending: the partials' JSON


class SiteStage:
    """The combiner for one partition of the partials topic (keyed by site), without Kafka:
    the same offset guard and state as the raw stage, so it checkpoints the same way. Each
    site's `SiteState` is assembled from its stored pieces on first use and kept here."""

    def __init__(self, partition: int, state: PartitionState, analytics: AnalyticsSettings,
                 alert_rules: Sequence[Rule] = (), site_thresholds: dict[str, dict[str, float]] | None = None) -> None:
        self.partition = partition
        self.state = state
        self.cfg = analytics
        self.sites: dict[str, SiteState] = {}
        site_rules = [rule for rule in alert_rules if rule.kind == "site"]
        # Rules on a site's results (its PUE) live here, where the site's windows are combined.
        self.alerts = RuleEngine(site_rules, state, site_thresholds) if site_rules else None

    def _site(self, name: str) -> SiteState:
        site = self.sites.get(name)
        if site is None:
            stored: SiteState | None = self.state.get(site_key(name))
            site = SiteState(next_start_ms=stored.next_start_ms, history=stored.history) if stored else SiteState()
            prefix = f"pending/{name}/"
            for key in [k for k in self.state if k.startswith(prefix)]:
                site.pending[int(key[len(prefix):])] = {p.partition: p for p in map(SitePartial.from_json, self.state[key])}
            self.sites[name] = site
        return site

    def _store(self, name: str, site: SiteState, starts_before: set[int]) -> None:
        self.state[site_key(name)] = SiteState(next_start_ms=site.next_start_ms, history=site.history)
        for start in starts_before - site.pending.keys():
            self.state.pop(pending_key(name, start), None)
        for start, parts in site.pending.items():
            self.state[pending_key(name, start)] = [p.to_json() for p in parts.values()]

    def handle(self, out: list[AnalyticsPoint], counts: Counter[str], offset: int, value: bytes | None,
               alerts: list[AlertEvent] | None = None) -> None:
        """One partial; the site results it completed go to `out`, alert transitions to `alerts`."""
        done = self.state.get(OFFSET_KEY)
        if done is not None and offset <= done:
            counts["redelivered"] += 1
            return
        # Partials are written only by the raw stage: one that cannot be read is a bug, counted
        # and logged by the worker rather than hidden.
        try:
            partial = SitePartial.from_json(orjson.loads(value or b""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            counts["unreadable_partials"] += 1
            log.error("unreadable partial skipped", partition=self.partition, offset=offset, error=repr(exc))
        else:
            site = self._site(partial.site)
            if site.next_start_ms is not None and partial.start_ms < site.next_start_ms:
                counts["stale_partials"] += 1  # a redelivery: that window was combined already
            starts_before = set(site.pending)
            before = site.to_json()
            try:
                points = add_partial(site, partial, self.cfg)
            except Exception as exc:  # a bug must not stop every site's results: keep the state as it was
                counts["combine_errors"] += 1
                log.exception("partial could not be combined; skipped", site=partial.site, start_ms=partial.start_ms,
                              partition=partial.partition, error=repr(exc))
                site = self.sites[partial.site] = SiteState.from_json(before)
                points = []
            counts["partials"] += 1
            counts["site_results"] += len(points)
            out.extend(points)
            if self.alerts is not None and alerts is not None:
                alerts.extend(self._judge(partial.site, points))
            self._store(partial.site, site, starts_before)
        self.state[OFFSET_KEY] = offset

    def _judge(self, site: str, points: list[AnalyticsPoint]) -> list[AlertEvent]:
        """Site rules on the 15-minute category-1 PUE roll-up, at the end of its window."""
        assert self.alerts is not None
        events: list[AlertEvent] = []
        for p in points:
            if (p.measurement == "pue" and p.tags.get("category") == "1" and p.tags.get("window") == PUE_ALERT_LABEL
                    and isinstance(pue := p.fields.get("pue"), float)):
                end_ms = round(p.time.timestamp() * 1000) + PUE_ALERT_WINDOW_MS
                events += self.alerts.observe_values(site, Where(site, "site"), {"@pue_15m": pue}, end_ms)
        return events
