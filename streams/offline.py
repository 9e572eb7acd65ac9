"""Offline reference: the same per-partition stage (validation rules + window engine) over
recorded records.

Test harnesses compare what the live pipeline wrote to InfluxDB with this, computed from the
recorded file alone (`dcpulse.producers.recording.iter_recording`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dcpulse.contract import AnalyticsPoint
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.stage import PartitionStage


def reference_results(records: Iterable[tuple[int, int | None, bytes | None, bytes | None]],
                      analytics: AnalyticsSettings | None = None,
                      validation: ValidationSettings | None = None) -> dict[str, AnalyticsPoint]:
    """records: (raw partition, Kafka timestamp in ms or None, key, value), each partition's
    records in its order. Returns point key -> point for every window the data closed."""
    stages: dict[int, PartitionStage] = {}
    results: dict[str, AnalyticsPoint] = {}
    for partition, timestamp_ms, key, value in records:
        stage = stages.get(partition)
        if stage is None:
            state: dict[str, Any] = {}
            stage = stages[partition] = PartitionStage(f"raw:{partition}", partition, state,
                                                       validation or ValidationSettings(),
                                                       analytics or AnalyticsSettings())
        verdict = stage.handle(None, None if timestamp_ms is None else timestamp_ms * 1000, key, value)
        for point in verdict.points:
            results[point.key] = point
    return results
