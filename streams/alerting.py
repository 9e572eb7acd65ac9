"""The rule engine: device samples in, alert transitions out, in event time (no I/O).

Each sample is matched against the rules of its device kind; each matching metric of a device is
one entity (the device, or `<device>/<metric>` for a glob), with one state machine
(streams/alertstate.py) per (rule, entity). The same samples in the same order give the same
transitions, whatever the wall clock says: a replay, fast or slow, repeats them exactly.
Alerts carry the sample's topology (site, hall, row, rack, device) as labels.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol
from collections.abc import MutableMapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from dcpulse.contract import Sample
from dcpulse.streams.alertrules import Rule
from dcpulse.streams.alertstate import ACTIVE, AlertState, Timing, Transition, breached, evaluate
from dcpulse.streams.validation import epoch_ms, iso_ms

ALERT_SCHEMA = "dcpulse.alert/1"


class Located(Protocol):
    """What labels an alert: a sample, or a silent device."""

    device: str
    kind: Any
    hall: str | None
    row: str | None
    rack: str | None


@dataclass(frozen=True, slots=True)
class Silent:
    """A device that has stopped reporting, as its last sample located it."""

    device: str
    kind: str
    hall: str | None
    row: str | None
    rack: str | None


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

    def __init__(self, rules: list[Rule], store: MutableMapping[str, Any] | None = None) -> None:
        self.rules = rules
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
            plan = self._plans[(kind, names)] = [(rule, metric) for rule in self._by_kind.get(kind, ())
                                                 for metric in names if fnmatchcase(metric, rule.metric)]
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

    def observe(self, site: str, sample: Sample) -> list[AlertEvent]:
        """Evaluate every rule of the sample's kind on it; the transitions it caused."""
        events: list[AlertEvent] = []
        metrics = sample.metrics
        mine = self._held.get((site, sample.device))  # None for a device with no alert: the common case
        ts: int | None = None
        for rule, metric in self._plan(sample.kind, metrics):
            raw = metrics[metric]
            if rule.divide_by is not None:
                divisor = metrics.get(rule.divide_by)
                if not divisor:
                    continue  # no ratio without its denominator
                raw = raw / divisor
            condition = rule.condition
            # Quiet: only a breach of the entry threshold can change anything (the hot path).
            if ((condition == "above" and raw <= rule.threshold or condition == "below" and raw >= rule.threshold
                 or condition == "equals" and raw != rule.threshold)
                    and (mine is None or (rule.name, metric) not in mine)):
                continue
            ts = epoch_ms(sample.ts) if ts is None else ts
            events.extend(self._judge(site, sample, rule, metric, raw, ts))
        if mine and sample.kind in self._nodata:  # a device back from silence resolves its NoData alert
            ts = epoch_ms(sample.ts) if ts is None else ts
            events.extend(self.silence(site, sample.device, sample.kind.value, sample.hall, sample.rack, ts, ts))
        return events

    @property
    def watches_silence(self) -> bool:
        return bool(self._nodata)


    def silence(self, site: str, device: str, kind: str, hall: str | None, rack: str | None, last_ms: int,
                now_ms: int) -> list[AlertEvent]:
        """NoData rules of the device's kind at the site's event time `now_ms`: the condition is
        that the device's last accepted sample (at `last_ms`) is more than `threshold` seconds
        old. The alert carries the device's own topology labels (site, hall, rack, device), so
        routes and silences of its other alerts apply to it too. Called on every watermark for
        every device, and on every sample (a silent device that reports again): a device that
        is neither silent nor alerting costs a comparison and a set lookup per rule."""
        events: list[AlertEvent] = []
        silent_s = (now_ms - last_ms) / 1000
        mine = self._held.get((site, device))
        for rule in self._nodata.get(kind, ()):
            if silent_s <= rule.threshold and (mine is None or (rule.name, rule.metric) not in mine):
                continue
            events.extend(self._judge(site, Silent(device, kind, hall, None, rack), rule, rule.metric, silent_s,
                                      now_ms))
        return events

    def _judge(self, site: str, sample: Located, rule: Rule, metric: str, raw: float, ts: int) -> list[AlertEvent]:
        entity = sample.device if metric == rule.metric else f"{sample.device}/{metric}"
        value = self._value(site, rule, entity, ts, raw)
        if value is None:
            return []
        key = alert_key(site, rule.name, entity)
        current: AlertState | None = self.store.get(key)
        condition = _condition(rule, value, current is not None and current.state in ACTIVE)
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
        return [_event(rule, site, sample, metric, value, t) for t in step.transitions]

    def _value(self, site: str, rule: Rule, entity: str, ts: int, raw: float) -> float | None:
        if rule.condition not in ("rate_above", "rate_below"):
            return raw
        key = last_key(site, rule.name, entity)
        previous = self.store.get(key)
        self.store[key] = [ts, raw]
        if previous is None or ts <= previous[0]:
            return None
        return (raw - previous[1]) / ((ts - previous[0]) / 60_000)


def _condition(rule: Rule, value: float, active: bool) -> bool:
    if rule.condition == "equals":
        return value == rule.threshold
    if rule.condition == "nodata":
        return value > rule.threshold
    above = rule.condition in ("above", "rate_above")
    return breached(value, rule.threshold, rule.clear, above, active)


def labels_of(rule: Rule, site: str, sample: Located, metric: str) -> dict[str, str]:
    labels = {"alertname": rule.name, "severity": rule.severity, "site": site, "device": sample.device,
              "kind": str(sample.kind)}
    for name in ("hall", "row", "rack"):
        if (where := getattr(sample, name)) is not None:
            labels[name] = where
    if metric != rule.metric:
        labels["metric"] = metric
    return {**labels, **rule.labels}


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256("\x00".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()).hexdigest()[:16]


def _event(rule: Rule, site: str, sample: Located, metric: str, value: float, transition: Transition) -> AlertEvent:
    labels = labels_of(rule, site, sample, metric)
    if transition.flapping:
        labels = {**labels, "flapping": "true"}
    context = {"site": site, "hall": sample.hall or "", "row": sample.row or "", "rack": sample.rack or "",
               "device": sample.device, "metric": metric, "value": f"{value:.4g}", "threshold": f"{rule.threshold:g}"}
    annotations = {name: template.format_map(context) for name, template in rule.annotations.items()}
    return AlertEvent(rule.name, fingerprint(labels_of(rule, site, sample, metric)), labels, annotations, transition,
                      value)
