"""The rule engine: device samples in, alert transitions out, in event time (no I/O).

Each sample is matched against the rules of its device kind; each matching metric of a device is
one entity (the device, or `<device>/<metric>` for a glob), with one state machine
(streams/alertstate.py) per (rule, entity). The same samples in the same order give the same
transitions, whatever the wall clock says: a replay, fast or slow, repeats them exactly.
Alerts carry the sample's topology (site, hall, row, rack, device) as labels.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Protocol
from collections.abc import MutableMapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from dcpulse.contract import Sample
from dcpulse.streams.alertrules import ANY, Rule
from dcpulse.streams.alertstate import ACTIVE, AlertState, Timing, Transition, breached, evaluate
from dcpulse.streams.validation import epoch_ms, iso_ms

ALERT_SCHEMA = "dcpulse.alert/1"
PLACE_LABELS = ("hall", "row", "rack", "cdu", "feed")


class Located(Protocol):
    """What labels an alert: a sample, or a `Where`."""

    device: str
    kind: Any
    hall: str | None
    row: str | None
    rack: str | None
    cdu: str | None
    feed: str | None


@dataclass(frozen=True, slots=True)
class Where:
    """An alert's entity when no sample is at hand: a silent device or rack, an agent, a site."""

    device: str
    kind: str
    hall: str | None = None
    row: str | None = None
    rack: str | None = None
    cdu: str | None = None
    feed: str | None = None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One transition of one alert, with what an operator and Alertmanager need."""

    rule: str
    fingerprint: str  # of the label set: the alert's identity
    labels: dict[str, str]
    annotations: dict[str, str]
    transition: Transition
    value: float

    def to_json(self) -> dict[str, Any]:
        t = self.transition
        return {"schema": ALERT_SCHEMA, "at": iso_ms(t.at_ms), "old": t.old, "new": t.new, "resolved": t.resolved,
                "flapping": t.flapping, "value": self.value, "fingerprint": self.fingerprint, "labels": self.labels,
                "annotations": self.annotations}


def alert_key(site: str, rule: str, entity: str) -> str:
    """Where an alert's state lives in the store (absent: quiet)."""
    return f"alert/{site}/{rule}/{entity}"


def last_key(site: str, rule: str, entity: str) -> str:
    """A rate rule's previous (ts ms, value) of an entity."""
    return f"alertlast/{site}/{rule}/{entity}"


def decode_alert_entry(key: str, data: Any) -> Any:
    return AlertState.from_json(data) if key.startswith("alert/") else data


class RuleEngine:
    """Evaluates rules on samples. `store` (a dict, or a stage's checkpointed PartitionState)
    holds the state of every alert that is not quiet and the rate rules' last values, so
    what is stored is what a restart resumes from."""

    def __init__(self, rules: list[Rule], store: MutableMapping[str, Any] | None = None,
                 site_thresholds: dict[str, dict[str, float]] | None = None) -> None:
        self.rules = rules
        self.site_thresholds = site_thresholds or {}  # site -> SITE_THRESHOLDS name -> value
        self.store: MutableMapping[str, Any] = store if store is not None else {}
        self._by_kind: dict[str, list[Rule]] = {}
        self._nodata: dict[str, list[Rule]] = {}
        for rule in rules:
            (self._nodata if rule.condition == "nodata" else self._by_kind).setdefault(rule.kind, []).append(rule)
        self._timing = {rule.name: Timing(round(rule.for_s * 1000), round(rule.keep_firing_for_s * 1000))
                        for rule in rules}
        # (kind, metric names) -> the (rule, metric) pairs to judge: samples of one device type
        # share their metric names, so the globs are matched once per type, not per sample.
        self._plans: dict[tuple[str, tuple[str, ...]], list[tuple[Rule, str]]] = {}
        self._held = self._index()

    def _plan(self, kind: str, metrics: dict[str, float]) -> list[tuple[Rule, str]]:
        names = tuple(metrics)
        plan = self._plans.get((kind, names))
        if plan is None:
            rules = (*self._by_kind.get(kind, ()), *self._by_kind.get(ANY, ()))
            plan = self._plans[(kind, names)] = [(rule, metric) for rule in rules for metric in names
                                                 if fnmatchcase(metric, rule.metric)]
        return plan

    def _index(self) -> dict[tuple[str, str], set[tuple[str, str]]]:
        """(site, device) -> {(rule, metric)} of every stored alert state: those not quiet."""
        held: dict[tuple[str, str], set[tuple[str, str]]] = {}
        globs = {rule.name: rule.metric for rule in self.rules}
        for key in self.store:
            if key.startswith("alert/"):
                _, site, rule, entity = key.split("/", 3)
                device, _, metric = entity.partition("/")
                held.setdefault((site, device), set()).add((rule, metric or globs.get(rule, "")))
        return held

    def observe(self, site: str, sample: Sample, derived: dict[str, float] | None = None,
                derived_at_ms: int | None = None) -> list[AlertEvent]:
        """Evaluate every rule of the sample's kind on it, at its event time, and on the
        `derived` inputs the stage computed for it (`DERIVED`) at `derived_at_ms`, the site's
        watermark: a device clock that is wrong must not move its own alerts' time; the
        transitions it caused."""
        kind = sample.kind.value
        mine = self._held.get((site, sample.device))  # None for a device with no alert: the common case
        metrics = sample.metrics
        events = self._run(site, sample, self._plan(kind, metrics), metrics, metrics, mine, sample.ts)
        if derived:
            events += self._run(site, sample, self._plan(kind, derived), derived, metrics, mine,
                                derived_at_ms if derived_at_ms is not None else sample.ts)
        if mine and kind in self._nodata:  # a device back from silence resolves its NoData alert
            ts = epoch_ms(sample.ts)
            events.extend(self.silence(site, sample, ts, ts))
        return events

    def observe_values(self, site: str, where: Located, values: dict[str, float], ts_ms: int) -> list[AlertEvent]:
        """Rules of `where.kind` on values that are not a sample's: an agent's dead-letter rate,
        a site's window results."""
        return self._run(site, where, self._plan(str(where.kind), values), values, values,
                         self._held.get((site, where.device)), ts_ms)

    def _run(self, site: str, where: Located, plan: list[tuple[Rule, str]], values: dict[str, float],
             metrics: dict[str, float], mine: set[tuple[str, str]] | None, at: Any) -> list[AlertEvent]:
        """Judge `values` by the plan's rules; `metrics` (the sample's) give the denominators."""
        events: list[AlertEvent] = []
        ts: int | None = at if isinstance(at, int) else None
        for rule, metric in plan:
            raw = values[metric]
            if rule.divide_by is not None:
                divisor = metrics.get(rule.divide_by)
                if not divisor:  # no ratio without its denominator: nothing to judge, an open alert clears
                    if mine is not None and (rule.name, metric) in mine:
                        ts = epoch_ms(at) if ts is None else ts
                        events.extend(self._judge(site, where, rule, metric, raw, ts, clear=True))
                    continue
                raw = raw / divisor
            condition = rule.condition
            threshold = rule.threshold if rule.threshold_from is None else self._limits(rule, site)[0]
            # Quiet: only a breach of the entry threshold can change anything (the hot path).
            if ((condition == "above" and raw <= threshold or condition == "below" and raw >= threshold
                 or condition == "equals" and raw != threshold)
                    and (mine is None or (rule.name, metric) not in mine)):
                continue
            ts = epoch_ms(at) if ts is None else ts
            events.extend(self._judge(site, where, rule, metric, raw, ts))
        return events

    def holds(self, site: str, device: str) -> bool:
        """Has the entity an alert that is not quiet?"""
        return (site, device) in self._held

    @property
    def watches_silence(self) -> bool:
        return bool(self._nodata)

    def quiet_band(self, kind: str, name: str) -> tuple[float, float] | None:
        """For the derived input `name` of a device kind: None if no rule judges it; else the
        range of values no rule can fire on, so the stage need not hand those in for a device
        with no alert (a ratio, a rate or a site's own threshold: an empty range)."""
        rules = [rule for rule in (*self._by_kind.get(kind, ()), *self._by_kind.get(ANY, ())) if rule.metric == name]
        if not rules:
            return None
        low, high = -math.inf, math.inf
        for rule in rules:
            if rule.divide_by is not None or rule.threshold_from is not None or rule.condition not in ("above", "below"):
                return (math.inf, -math.inf)
            if rule.condition == "above":
                high = min(high, rule.threshold)
            else:
                low = max(low, rule.threshold)
        return low, high

    def silence(self, site: str, where: Located, last_ms: int, now_ms: int) -> list[AlertEvent]:
        """NoData rules of `where.kind` (a device kind, or `rack`) at the site's event time
        `now_ms`: the condition is that the last accepted sample (at `last_ms`) is more than
        `threshold` seconds old. The alert carries the silent entity's own topology labels, so
        routes, silences and inhibitions of its other alerts apply to it too. Called on every
        watermark for every device and rack, and on every sample of a device with an alert (a
        silent device that reports again): one that is neither silent nor alerting costs a
        comparison and a set lookup per rule."""
        events: list[AlertEvent] = []
        silent_s = (now_ms - last_ms) / 1000
        mine = self._held.get((site, where.device))
        for rule in self._nodata.get(str(where.kind), ()):
            if silent_s <= rule.threshold and (mine is None or (rule.name, rule.metric) not in mine):
                continue
            events.extend(self._judge(site, where, rule, rule.metric, silent_s, now_ms))
        return events

    def _judge(self, site: str, sample: Located, rule: Rule, metric: str, raw: float, ts: int,
               clear: bool = False) -> list[AlertEvent]:
        entity = sample.device if metric == rule.metric else f"{sample.device}/{metric}"
        value = self._value(site, rule, entity, ts, raw)
        if value is None:
            return []
        key = alert_key(site, rule.name, entity)
        current: AlertState | None = self.store.get(key)
        threshold, clear_at = self._limits(rule, site)
        condition = not clear and _condition(rule, value, threshold, clear_at, current is not None and current.state in ACTIVE)
        if current is None and not condition:
            return []
        step = evaluate(current or AlertState(), condition, ts, self._timing[rule.name])
        where, ident = (site, sample.device), (rule.name, metric)
        if step.state.quiet:
            if (mine := self._held.get(where)) is not None:
                mine.discard(ident)
                if not mine:
                    del self._held[where]
            if current is not None:
                del self.store[key]
        else:
            self._held.setdefault(where, set()).add(ident)
            self.store[key] = step.state
        return [_event(rule, site, sample, metric, value, threshold, t) for t in step.transitions]

    def _limits(self, rule: Rule, site: str) -> tuple[float, float | None]:
        """The rule's (threshold, clear) at a site: from the site model where the rule says so
        and the site is known (the clear threshold keeps its distance)."""
        if rule.threshold_from is None or (known := self.site_thresholds.get(site, {}).get(rule.threshold_from)) is None:
            return rule.threshold, rule.clear
        return known, None if rule.clear is None else rule.clear + known - rule.threshold

    def _value(self, site: str, rule: Rule, entity: str, ts: int, raw: float) -> float | None:
        if rule.condition not in ("rate_above", "rate_below"):
            return raw
        key = last_key(site, rule.name, entity)
        previous = self.store.get(key)
        self.store[key] = [ts, raw]
        if previous is None or ts <= previous[0]:
            return None
        return (raw - previous[1]) / ((ts - previous[0]) / 60_000)


def _condition(rule: Rule, value: float, threshold: float, clear: float | None, active: bool) -> bool:
    if rule.condition == "equals":
        return value == threshold
    if rule.condition == "nodata":
        return value > threshold
    above = rule.condition in ("above", "rate_above")
    return breached(value, threshold, clear, above, active)


def labels_of(rule: Rule, site: str, sample: Located, metric: str) -> dict[str, str]:
    labels = {"alertname": rule.name, "severity": rule.severity, "site": site, "device": sample.device,
              "kind": str(sample.kind)}
    for name in PLACE_LABELS:
        if (where := getattr(sample, name)) is not None:
            labels[name] = where
    if metric != rule.metric:
        labels["metric"] = metric
    return {**labels, **rule.labels}


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256("\x00".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()).hexdigest()[:16]


def _event(rule: Rule, site: str, sample: Located, metric: str, value: float, threshold: float,
           transition: Transition) -> AlertEvent:
    labels = labels_of(rule, site, sample, metric)
    if transition.flapping:
        labels = {**labels, "flapping": "true"}
    context = {"site": site, "device": sample.device, "metric": metric, "value": f"{value:.4g}",
               "threshold": f"{threshold:g}", **{name: getattr(sample, name) or "" for name in PLACE_LABELS}}
    annotations = {name: template.format_map(context) for name, template in rule.annotations.items()}
    return AlertEvent(rule.name, fingerprint(labels_of(rule, site, sample, metric)), labels, annotations, transition,
                      value)
