"""The analytics stage for one raw partition, without Kafka: raw record in, verdict and closed
windows out. The Faust worker (streams/app.py) runs one per assigned partition over a
`PartitionState` it persists; the offline reference (streams/offline.py) runs the same code over
plain dicts, so both give the same numbers.

A raw partition carries whole sites (the contract keys records by site), so validation state
(duplicates, the partition's clock, the offset guard) and window state (per device and site)
both live with the partition; a record keyed otherwise is dead-lettered `wrong_key`, since its
site's windows would be split between partitions. A record the stage itself fails on (a bug)
is dead-lettered `stage_error` with the exception, so one bad record cannot stop the worker.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from dcpulse.contract import AnalyticsPoint, Telemetry
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.validation import (
    STAGE_ERROR,
    Rejection,
    already_handled,
    mark_handled,
    process_record,
)
from dcpulse.streams.windows import WindowEngine


@dataclass
class Verdict:
    """What one raw record produced. `outcome` None: a redelivered record, handled before."""

    outcome: Telemetry | Rejection | None
    points: list[AnalyticsPoint] = field(default_factory=list)
    late: bool = False  # valid, but too late for its window (engine.late)
    not_newer: bool = False  # valid, but not newer than its device's last sample in the windows


class PartitionStage:
    def __init__(self, source: str, partition: int, state: MutableMapping[str, Any],
                 validation: ValidationSettings, analytics: AnalyticsSettings) -> None:
        self.source = source  # "<raw topic>:<partition>", the window engine's watermark source
        self.partition = partition
        self.state = state
        self.checks = validation
        self.engine = WindowEngine(analytics, state)

    def handle(self, offset: int | None, producer_us: int | None, key: bytes | None,
               value: bytes | None) -> Verdict:
        """One record, in partition order. `offset` None: no redelivery guard (offline input
        that is read once)."""
        if offset is not None and already_handled(self.state, self.partition, offset):
            return Verdict(None)
        try:
            verdict = self._judge_and_window(producer_us, key, value)
        except Exception as exc:  # a bug must neither stop the stage nor lose the record: dead-letter it
            verdict = Verdict(Rejection(STAGE_ERROR, f"{type(exc).__name__}: {exc}"[:1000]))
        if offset is not None:
            mark_handled(self.state, self.partition, offset)
        return verdict

    def _judge_and_window(self, producer_us: int | None, key: bytes | None, value: bytes | None) -> Verdict:
        outcome = process_record(value, self.partition, producer_us, self.state, self.state,
                                 max_clock_skew_s=self.checks.max_clock_skew_s,
                                 max_message_bytes=self.checks.max_message_bytes, key=key)
        verdict = Verdict(outcome)
        if isinstance(outcome, Telemetry):
            late, not_newer = self.engine.late, self.engine.redelivered
            verdict.points = self.engine.process(self.source, outcome)
            verdict.late = self.engine.late > late
            verdict.not_newer = self.engine.redelivered > not_newer
        return verdict
