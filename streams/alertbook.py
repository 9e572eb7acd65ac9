"""What is alerting now, and what suppresses what (pure): the alert log's last step.

The stages emit each alert's transitions (streams/alerting.py) from wherever its entity lives:
a CDU's from one raw partition, its racks' from others. The book folds every transition into
the set of active (firing or keep-firing) alerts and records each one with `inhibited_by`: the
fingerprints of active alerts whose derived inhibit rule (streams/alertrules.py `inhibitions`)
covers it, the same rules Alertmanager is configured with. When a source alert starts or stops
firing, the active alerts it covers are recorded again, so the log says when each suppression
began and ended whichever transition arrived first. Every record also names its `cause`: the
topology element notifications are grouped by (`cause_of`).
"""

from __future__ import annotations

from typing import Any

from dcpulse.streams.alertrules import Inhibition

ACTIVE_STATES = frozenset({"firing", "keep_firing"})
Record = dict[str, Any]  # a dcpulse.alert/1 transition plus `inhibited_by` and `cause`


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
    def __init__(self, inhibitions: list[Inhibition]) -> None:
        self.inhibitions = inhibitions
        self.sources = {inhibition.source for inhibition in inhibitions}
        self.active: dict[str, Record] = {}  # fingerprint -> its latest record

    def inhibitors(self, labels: dict[str, str], fingerprint: str) -> list[str]:
        """Fingerprints of the active alerts that suppress an alert with these labels."""
        return sorted(fp for fp, source in self.active.items() if fp != fingerprint
                      and any(i.covers(source["labels"], labels) for i in self.inhibitions))

    def apply(self, event: dict[str, Any]) -> list[Record]:
        """One transition -> the records it causes: itself, then any active alert whose
        suppression it changed (at the transition's time, state unchanged)."""
        fp, labels = event["fingerprint"], event["labels"]
        was_active = fp in self.active
        record = {**event, "inhibited_by": self.inhibitors(labels, fp), "cause": cause_of(labels, self.inhibitions)}
        if event["new"] in ACTIVE_STATES:
            self.active[fp] = record
        else:
            self.active.pop(fp, None)
        records = [record]
        if labels.get("alertname") in self.sources and was_active != (fp in self.active):
            for other_fp, other in sorted(self.active.items()):
                now = self.inhibitors(other["labels"], other_fp)
                if other_fp != fp and now != other["inhibited_by"]:
                    updated = {**other, "at": event["at"], "old": other["new"], "resolved": False, "inhibited_by": now}
                    self.active[other_fp] = updated
                    records.append(updated)
        return records
