"""What is alerting, and what suppresses what, in event time (pure): the alert log's last step.

The stages emit each alert's transitions (streams/alerting.py) from wherever its entity lives:
a CDU's from one raw partition, its racks' from others, so the book reads them in an order that
need not be event time (one alert's own transitions do stay in order). It records every
transition with `inhibited_by`: the fingerprints of the alerts whose derived inhibit rule
(streams/alertrules.py `inhibitions`, the rules Alertmanager is configured with) covers it and
that were firing at that transition's event time. A source's firing spans are kept, so when a
span opens or closes after records it covers were written, those records are written again
with the same time (the alert log keys a record by alert and time, so the new one replaces
the old): whatever the arrival order, the log ends up the same. Only transitions are recorded:
an alert already firing when its source starts keeps the record of its own last transition
(Alertmanager shows it suppressed from then on; `dcpulse alerts active` judges suppression
from the alerts firing now). Every record also names its `cause`: the
topology element notifications are grouped by (`cause_of`). Records and spans older than
`horizon_ms` before the newest event time are forgotten.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dcpulse.streams.alertrules import Inhibition
from dcpulse.streams.validation import epoch_ms

ACTIVE_STATES = frozenset({"firing", "keep_firing"})
Record = dict[str, Any]  # a dcpulse.alert/1 transition plus `inhibited_by` and `cause`
OPEN = 2**63  # an open span's end


def event_ms(record: Record) -> int:
    return epoch_ms(datetime.fromisoformat(record["at"]))


def cause_of(labels: dict[str, str], inhibitions: list[Inhibition]) -> str:
    """The topology element an alert is grouped under: for an alert that inhibits others, the
    element its scope names (its CDU, rack, feed, device, or the site); otherwise the CDU whose
    loop cools its device, else its rack, else the device itself."""
    for inhibition in inhibitions:
        if inhibition.source == labels.get("alertname"):
            return labels.get(inhibition.equal[-1], labels.get("site", ""))
    for name in ("cdu", "rack", "device"):
        if name in labels:
            return labels[name]
    return labels.get("site", "")


class AlertBook:
    def __init__(self, inhibitions: list[Inhibition], horizon_ms: int = 3_600_000) -> None:
        self.inhibitions = inhibitions
        self.sources = {inhibition.source for inhibition in inhibitions}
        self.horizon_ms = horizon_ms
        self.active: dict[str, Record] = {}  # fingerprint -> its latest record, while firing
        self.records: dict[str, dict[int, Record]] = {}  # fingerprint -> event time (ms) -> record
        self.spans: dict[str, list[list[Any]]] = {}  # source fingerprint -> [[start ms, end ms, labels]]
        self._newest = 0

    def inhibitors(self, labels: dict[str, str], fingerprint: str, at_ms: int) -> list[str]:
        """Fingerprints of the alerts firing at `at_ms` that suppress an alert with these labels."""
        return sorted(fp for fp, spans in self.spans.items() if fp != fingerprint
                      and any(start <= at_ms < end and self._covers(source, labels) for start, end, source in spans))

    def apply(self, event: dict[str, Any]) -> list[Record]:
        """One transition -> the records to write: its own, then any it changed."""
        fp, labels, at_ms = event["fingerprint"], event["labels"], event_ms(event)
        moved = self._span(fp, event, at_ms) if labels.get("alertname") in self.sources else False
        record = {**event, "inhibited_by": self.inhibitors(labels, fp, at_ms),
                  "cause": cause_of(labels, self.inhibitions)}
        self._keep(record, at_ms)
        records = [record]
        if moved:
            records += self._rejudge(fp, labels, at_ms)
        self._forget(at_ms)
        return records

    def _span(self, fp: str, event: dict[str, Any], at_ms: int) -> bool:
        """Open or close the source's span; whether it did."""
        spans = self.spans.setdefault(fp, [])
        is_open = bool(spans) and spans[-1][1] == OPEN
        if event["new"] in ACTIVE_STATES and not is_open:
            spans.append([at_ms, OPEN, event["labels"]])
            return True
        if event["new"] not in ACTIVE_STATES and is_open:
            spans[-1][1] = at_ms
            return True
        return False

    def _rejudge(self, source_fp: str, source: dict[str, str], at_ms: int) -> list[Record]:
        """The records the source's span change covers (from the change on), judged again."""
        changed = []
        for fp, by_time in sorted(self.records.items()):
            if fp == source_fp or not self._covers(source, next(iter(by_time.values()))["labels"]):
                continue
            for t in sorted(t for t in by_time if t >= at_ms):
                record = by_time[t]
                now = self.inhibitors(record["labels"], fp, t)
                if now != record["inhibited_by"]:
                    record = {**record, "inhibited_by": now}
                    self._keep(record, t)
                    changed.append(record)
        return changed

    def _keep(self, record: Record, at_ms: int) -> None:
        fp = record["fingerprint"]
        by_time = self.records.setdefault(fp, {})
        by_time[at_ms] = record
        latest = by_time[max(by_time)]
        if latest["new"] in ACTIVE_STATES:
            self.active[fp] = latest
        else:
            self.active.pop(fp, None)

    def _covers(self, source: dict[str, str], target: dict[str, str]) -> bool:
        return any(i.covers(source, target) for i in self.inhibitions)

    def _forget(self, at_ms: int) -> None:
        """Drop records and closed spans older than the horizon; each alert keeps its latest record."""
        if at_ms <= self._newest + self.horizon_ms // 10:  # prune now and then, not per record
            return
        self._newest, cutoff = at_ms, at_ms - self.horizon_ms
        for fp in list(self.records):
            by_time = self.records[fp]
            latest = max(by_time)
            for t in [t for t in by_time if t < cutoff and t != latest]:
                del by_time[t]
            if latest < cutoff and fp not in self.active:
                del self.records[fp]
        for fp in list(self.spans):
            self.spans[fp] = [span for span in self.spans[fp] if span[1] >= cutoff]
            if not self.spans[fp]:
                del self.spans[fp]


# The alert log's fields, and the tags that are not labels (docs/influx-schema.md).
LOG_FIELDS = frozenset({"state", "old", "value", "resolved", "flapping", "inhibited_by", "summary", "fingerprint",
                        "cause"})


def active_from_log(rows: list[dict[str, Any]], inhibitions: list[Inhibition]) -> list[dict[str, Any]]:
    """The alerts firing now from the alert log's rows (oldest first): each one's last record,
    with `suppressed_by` and `suppresses` (alertnames) judged among what fires now (a record
    says what suppressed it at its own time), worst first."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest[row["fingerprint"]] = row
    active = [r for r in latest.values() if r["state"] in ACTIVE_STATES]
    labels = {r["fingerprint"]: {k: v for k, v in r.items() if not k.startswith("_") and k not in LOG_FIELDS}
              for r in active}
    for r in active:
        mine = labels[r["fingerprint"]]
        r["suppressed_by"] = sorted(o["alertname"] for fp, o in labels.items()
                                    if fp != r["fingerprint"] and any(i.covers(o, mine) for i in inhibitions))
        r["suppresses"] = sorted(o["alertname"] for fp, o in labels.items()
                                 if fp != r["fingerprint"] and any(i.covers(mine, o) for i in inhibitions))
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(active, key=lambda r: (order.get(r.get("severity", ""), 3), r["_time"]))
