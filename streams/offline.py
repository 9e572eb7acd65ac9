"""Offline reference: the same per-partition stage and site combiner over recorded records,
without Kafka.

Test harnesses compare what the live pipeline wrote to InfluxDB with this, computed from the
records a replay sends to each partition (`dcpulse.producers.recording.replay_plan`).
"""

from __future__ import annotations

from collections.abc import Iterable

from dcpulse.contract import AnalyticsPoint
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.combine import SiteState, add_partial
from dcpulse.streams.stage import Outputs, PartitionStage, new_state

Record = tuple[int, int | None, bytes | None, bytes | None]  # (partition, Kafka timestamp ms, key, value)


def reference_results(records: Iterable[Record], partitions: int, analytics: AnalyticsSettings | None = None,
                      validation: ValidationSettings | None = None) -> dict[str, AnalyticsPoint]:
    """Point key -> point for every window the records closed; each partition's records in
    its order (partitions may interleave: the combiner's result does not depend on it)."""
    analytics = analytics or AnalyticsSettings()
    validation = validation or ValidationSettings()
    stages: dict[int, PartitionStage] = {}
    offsets: dict[int, int] = {}
    out = Outputs()
    for partition, timestamp_ms, key, value in records:
        stage = stages.get(partition)
        if stage is None:
            stage = stages[partition] = PartitionStage("raw", partition, partitions,
                                                       new_state(partition, analytics.state_buckets),
                                                       validation, analytics)
        offsets[partition] = offset = offsets.get(partition, -1) + 1
        stage.handle(out, offset, timestamp_ms, key, value)
    results = {p.key: p for p in out.results}
    sites: dict[str, SiteState] = {}
    for partial in sorted(out.partials, key=lambda p: (p.site, p.start_ms, p.partition)):
        for p in add_partial(sites.setdefault(partial.site, SiteState()), partial, analytics):
            results[p.key] = p
    return results
