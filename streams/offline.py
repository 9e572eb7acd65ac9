"""Offline reference: the same pure validation and window engine over recorded records.

Test harnesses compare what the live pipeline wrote to InfluxDB with this, computed from the
recorded file alone (`dcpulse.producers.recording.iter_recording`).
"""

from __future__ import annotations

from collections.abc import Iterable

from dcpulse.contract import AnalyticsPoint, Telemetry
from dcpulse.streams.validation import validate
from dcpulse.streams.windows import AnalyticsSettings, WindowEngine


def reference_results(records: Iterable[tuple[str, bytes | None]],
                      settings: AnalyticsSettings | None = None) -> dict[str, AnalyticsPoint]:
    """records: (source partition id, raw value) in each partition's order. Returns point key ->
    point for every window closed by the data (the last, still-open windows are not emitted)."""
    engine = WindowEngine(settings or AnalyticsSettings(), {})
    results: dict[str, AnalyticsPoint] = {}
    for src, value in records:
        event = validate(value)
        if isinstance(event, Telemetry):
            for point in engine.process(src, event):
                results[point.key] = point
    return results
