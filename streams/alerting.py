"""The rule engine: device samples in, alert transitions out, in event time (no I/O).

Each sample is matched against the rules of its device kind; each matching metric of a device is
one entity (the device, or `<device>/<metric>` for a glob), with one state machine
(streams/alertstate.py) per (rule, entity). The same samples in the same order give the same
transitions, whatever the wall clock says: a replay, fast or slow, repeats them exactly.
Alerts carry the sample's topology (site, hall, row, rack, device) as labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from dcpulse.contract import Sample
from dcpulse.streams.alertrules import Rule
from dcpulse.streams.alertstate import ACTIVE, AlertState, Timing, Transition, breached, evaluate
from dcpulse.streams.validation import epoch_ms


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One transition of one alert, with what an operator and Alertmanager need."""

    rule: str
    fingerprint: str  # of the label set: the alert's identity
    labels: dict[str, str]
    annotations: dict[str, str]
    transition: Transition
    value: float


@dataclass
class RuleEngine:
    rules: list[Rule]
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    last: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # rate rules: (ts ms, value)

    def __post_init__(self) -> None:
        self._by_kind: dict[str, list[Rule]] = {}
        for rule in self.rules:
            self._by_kind.setdefault(rule.kind, []).append(rule)
        self._timing = {rule.name: Timing(round(rule.for_s * 1000), round(rule.keep_firing_for_s * 1000))
                        for rule in self.rules}

    def observe(self, site: str, sample: Sample) -> list[AlertEvent]:
        """Evaluate every rule of the sample's kind on it; the transitions it caused."""
        events: list[AlertEvent] = []
        ts = epoch_ms(sample.ts)
        for rule in self._by_kind.get(sample.kind, ()):
            for metric, raw in sample.metrics.items():
                if not fnmatchcase(metric, rule.metric):
                    continue
                if rule.divide_by is not None:
                    divisor = sample.metrics.get(rule.divide_by)
                    if not divisor:
                        continue  # no ratio without its denominator
                    raw = raw / divisor
                entity = sample.device if metric == rule.metric else f"{sample.device}/{metric}"
                key = (rule.name, entity)
                value = self._value(rule, key, ts, raw)
                if value is None:
                    continue
                current = self.states.get(key, AlertState())
                condition = _condition(rule, value, current.state in ACTIVE)
                step = evaluate(current, condition, ts, self._timing[rule.name])
                self.states[key] = step.state
                for transition in step.transitions:
                    events.append(_event(rule, site, sample, metric, value, transition))
        return events

    def _value(self, rule: Rule, key: tuple[str, str], ts: int, raw: float) -> float | None:
        if rule.condition not in ("rate_above", "rate_below"):
            return raw
        previous = self.last.get(key)
        self.last[key] = (ts, raw)
        if previous is None or ts <= previous[0]:
            return None
        return (raw - previous[1]) / ((ts - previous[0]) / 60_000)


def _condition(rule: Rule, value: float, active: bool) -> bool:
    if rule.condition == "equals":
        return value == rule.threshold
    above = rule.condition in ("above", "rate_above")
    return breached(value, rule.threshold, rule.clear, above, active)


def labels_of(rule: Rule, site: str, sample: Sample, metric: str) -> dict[str, str]:
    labels = {"alertname": rule.name, "severity": rule.severity, "site": site, "device": sample.device,
              "kind": sample.kind}
    for name in ("hall", "row", "rack"):
        if (where := getattr(sample, name)) is not None:
            labels[name] = where
    if metric != rule.metric:
        labels["metric"] = metric
    return {**labels, **rule.labels}


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256("\x00".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()).hexdigest()[:16]


def _event(rule: Rule, site: str, sample: Sample, metric: str, value: float, transition: Transition) -> AlertEvent:
    labels = labels_of(rule, site, sample, metric)
    if transition.flapping:
        labels = {**labels, "flapping": "true"}
    context = {"site": site, "hall": sample.hall or "", "row": sample.row or "", "rack": sample.rack or "",
               "device": sample.device, "metric": metric, "value": f"{value:.4g}", "threshold": f"{rule.threshold:g}"}
    annotations = {name: template.format_map(context) for name, template in rule.annotations.items()}
    return AlertEvent(rule.name, fingerprint(labels_of(rule, site, sample, metric)), labels, annotations, transition,
                      value)
