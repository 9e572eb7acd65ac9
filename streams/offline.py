"""Offline reference: the same per-partition stage and site combiner over recorded records,
without Kafka.

Test harnesses compare what the live pipeline wrote to InfluxDB with this, computed from the
records a replay sends to each partition (`dcpulse.producers.recording.replay_plan`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import orjson

from dcpulse.contract import AnalyticsPoint
from dcpulse.producers.sitemodel import preset_thresholds
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.alerting import AlertEvent
from dcpulse.streams.alertrules import Rule
from dcpulse.streams.combine import SiteStage, SiteState, add_partial, decode_site_state
from dcpulse.streams.stage import Outputs, PartitionStage, new_state
from dcpulse.streams.state import PartitionState

Record = tuple[int, int | None, bytes | None, bytes | None]  # (partition, Kafka timestamp ms, key, value)


def partition_outputs(records: Iterable[Record], partitions: int, analytics: AnalyticsSettings,
                      validation: ValidationSettings, rules: Sequence[Rule] = ()) -> Outputs:
    """Each partition's stage over its records, in order, from fresh state: all they output."""
    stages: dict[int, PartitionStage] = {}
    offsets: dict[int, int] = {}
    out = Outputs()
    for partition, timestamp_ms, key, value in records:
        stage = stages.get(partition)
        if stage is None:
            stage = stages[partition] = PartitionStage("raw", partition, partitions,
                                                       new_state(partition, analytics.state_buckets),
                                                       validation, analytics, rules)
        offsets[partition] = offset = offsets.get(partition, -1) + 1
        stage.handle(out, offset, timestamp_ms, key, value)
    return out


def reference_results(records: Iterable[Record], partitions: int, analytics: AnalyticsSettings | None = None,
                      validation: ValidationSettings | None = None) -> dict[str, AnalyticsPoint]:
    """Point key -> point for every window the records closed; each partition's records in
    its order (partitions may interleave: the combiner's result does not depend on it)."""
    analytics = analytics or AnalyticsSettings()
    validation = validation or ValidationSettings()
    out = partition_outputs(records, partitions, analytics, validation)
    results = {p.key: p for p in out.results}
    sites: dict[str, SiteState] = {}
    for partial in sorted(out.partials, key=lambda p: (p.site, p.start_ms, p.partition)):
        for p in add_partial(sites.setdefault(partial.site, SiteState()), partial, analytics):
            results[p.key] = p
    return results


def reference_alerts(records: Iterable[Record], partitions: int, rules: Sequence[Rule],
                     analytics: AnalyticsSettings | None = None,
                     validation: ValidationSettings | None = None) -> list[AlertEvent]:
    """Every alert transition the stages raise on the records (site rules through the combiner),
    ordered by event time then fingerprint: what the live pipeline's alerts topic holds, at any
    replay speed and across restarts (which may repeat a transition, never change one)."""
    analytics = analytics or AnalyticsSettings()
    validation = validation or ValidationSettings()
    out = partition_outputs(records, partitions, analytics, validation, rules)
    sites = SiteStage(0, PartitionState(0, analytics.state_buckets, decode_site_state), analytics, rules,
                      preset_thresholds())
    for offset, partial in enumerate(sorted(out.partials, key=lambda p: (p.site, p.start_ms, p.partition))):
        sites.handle([], Counter(), offset, orjson.dumps(partial.to_json()), out.alerts)
    return sorted(out.alerts, key=lambda e: (e.transition.at_ms, e.fingerprint, e.transition.new))
