"""Offline reference: the same pure validation and window engine over recorded records.

Test harnesses compare what the live pipeline wrote to InfluxDB with this, computed from the
recorded file alone (`dcpulse.producers.recording.iter_recording`).
"""

from __future__ import annotations

from collections.abc import Iterable

from dcpulse.contract import AnalyticsPoint, Telemetry
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.validation import process_record
from dcpulse.streams.windows import WindowEngine


def reference_results(records: Iterable[tuple[int, int | None, bytes | None]],
                      analytics: AnalyticsSettings | None = None,
                      validation: ValidationSettings | None = None) -> dict[str, AnalyticsPoint]:
    """records: (raw partition, Kafka timestamp in ms or None, value), each partition's records in
    its order. Runs the validation stage's rules (with dicts where the worker has tables) and the
    window engine; returns point key -> point for every window the data closed."""
    checks = validation or ValidationSettings()
    engine = WindowEngine(analytics or AnalyticsSettings(), {})
    clocks: dict[str, bytes] = {}
    devices: dict[str, bytes] = {}
    results: dict[str, AnalyticsPoint] = {}
    for partition, timestamp_ms, value in records:
        outcome = process_record(value, partition, None if timestamp_ms is None else timestamp_ms * 1000,
                                 clocks, devices, max_clock_skew_s=checks.max_clock_skew_s,
                                 max_message_bytes=checks.max_message_bytes)
        if isinstance(outcome, Telemetry):
            for point in engine.process(f"raw:{partition}", outcome):
                results[point.key] = point
    return results
