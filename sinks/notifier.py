"""Alert delivery to a Prometheus Alertmanager (API v2), from the alert book's records.

dcpulse decides when an alert fires and resolves (in event time, streams/alerting.py); Alertmanager
groups, inhibits, silences and notifies. Firing alerts are posted when they fire and re-posted
every `resend_s` with `endsAt` four resends ahead (as Prometheus does), so Alertmanager keeps
them while dcpulse runs and lets them lapse if it stops; a resolution is posted with `endsAt`
now. Times sent are wall-clock times: Alertmanager judges `endsAt` against its own clock, and a
replay's event times may lie in the past or run ahead. An unreachable Alertmanager is logged once
per outage and retried; posts waiting for it are kept (one per alert), so nothing is lost and
nothing blocks the alert log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dcpulse.log import get_logger
from dcpulse.settings import AlertmanagerSettings
from dcpulse.sinks.alertmanager import AlertmanagerClient, AlertmanagerError
from dcpulse.streams.alertbook import ACTIVE_STATES, Record

log = get_logger(__name__)
HOLD_RESENDS = 4  # a firing alert's endsAt is this many resend intervals ahead


def am_labels(record: Record, pipeline: str) -> dict[str, str]:
    """An alert's Alertmanager labels: its own, its cause (what notifications group by) and the
    pipeline that raised it (so pipelines sharing an Alertmanager stay apart)."""
    return {**record["labels"], "cause": record["cause"], "pipeline": pipeline}


def am_alert(labels: dict[str, str], record: Record, starts: datetime, ends: datetime) -> dict[str, Any]:
    annotations = {**record.get("annotations", {}), "value": f"{record['value']:.4g}",
                   "event_time": record["at"]}
    return {"labels": labels, "annotations": annotations, "startsAt": _rfc3339(starts), "endsAt": _rfc3339(ends)}


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Notifier:
    """Keeps the firing alerts and posts them; `take` is called by the alert log's sink thread,
    `run` loops in its own thread."""

    def __init__(self, client: AlertmanagerClient, settings: AlertmanagerSettings, pipeline: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.resend_s = settings.resend_s
        self.pipeline = pipeline
        self.now = now
        self.lock = threading.Lock()
        self.firing: dict[str, tuple[dict[str, str], Record, datetime]] = {}  # fingerprint -> labels, record, start
        self.outbox: dict[tuple[str, str], dict[str, Any]] = {}  # (fingerprint, labels) -> the post waiting
        self.counts = {"posted": 0, "failed_posts": 0}
        self._down_since: float | None = None

    def take(self, records: list[Record]) -> None:
        """Queue what the records change: a newly firing alert, a resolution, new labels."""
        now = self.now()
        with self.lock:
            for record in records:
                fp = record["fingerprint"]
                labels = am_labels(record, self.pipeline)
                held = self.firing.get(fp)
                if held is not None and (record["new"] not in ACTIVE_STATES or held[0] != labels):
                    del self.firing[fp]  # resolved, or its labels changed (flapping): end the old one
                    self._queue(fp, am_alert(held[0], held[1], held[2], now))
                    held = None
                if record["new"] in ACTIVE_STATES and held is None:
                    start = min(datetime.fromisoformat(record["at"]), now)
                    self.firing[fp] = (labels, record, start)
                    self._queue(fp, self._firing(labels, record, start, now))
                elif record["new"] in ACTIVE_STATES:
                    self.firing[fp] = (labels, record, held[2])

    def resend(self) -> None:
        """Queue every firing alert again (its endsAt moves on)."""
        now = self.now()
        with self.lock:
            for fp, (labels, record, start) in self.firing.items():
                self._queue(fp, self._firing(labels, record, start, now))

    def flush(self) -> bool:
        """Post what is queued; False (and kept queued) if Alertmanager did not take it."""
        with self.lock:
            batch = dict(self.outbox)
        if not batch:
            return True
        try:
            self.client.post(list(batch.values()))
        except AlertmanagerError as exc:
            self.counts["failed_posts"] += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("alertmanager unreachable; alerts kept and retried", error=str(exc), queued=len(batch))
            return False
        if self._down_since is not None:
            log.info("alertmanager reachable again", down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        self.counts["posted"] += len(batch)
        with self.lock:
            for key, alert in batch.items():
                if self.outbox.get(key) is alert:
                    del self.outbox[key]
        return True

    def run(self, stopping: threading.Event, tick_s: float = 1.0) -> None:
        """Post changes within `tick_s`, re-post firing alerts every `resend_s`, until stopped."""
        next_resend = time.monotonic() + self.resend_s
        while not stopping.wait(tick_s):
            if time.monotonic() >= next_resend:
                self.resend()
                next_resend = time.monotonic() + self.resend_s
            self.flush()
        self.flush()

    def _firing(self, labels: dict[str, str], record: Record, start: datetime, now: datetime) -> dict[str, Any]:
        return am_alert(labels, record, start, now + timedelta(seconds=HOLD_RESENDS * self.resend_s))

    def _queue(self, fp: str, alert: dict[str, Any]) -> None:
        self.outbox[(fp, repr(sorted(alert["labels"].items())))] = alert
