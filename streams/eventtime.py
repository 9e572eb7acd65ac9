"""Event time on one raw partition, per site: watermarks, sample-time bounds, window closing.

Pure functions over a `SiteClock`. Only watermark records move a site's event time (a sample
never does), so a single sample, whatever its timestamps, cannot close or hold windows for
anyone. A site's producer broadcasts the same watermarks to every partition in the same
order, so every partition closes the same windows of that site, whether or not it carries
any of the site's agents (docs/architecture.md, "Event time").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dcpulse.deadletter import Rejection
from dcpulse.streams.validation import CLOCK_SKEW, iso_ms


@dataclass(frozen=True, slots=True)
class SiteClock:
    """One site on one raw partition. All times are epoch milliseconds."""

    watermark_ms: int  # the newest accepted watermark
    producer_ms: int | None  # Kafka timestamp of that watermark record (producer time)
    next_start_ms: int  # start of the next window to close here

    def to_json(self) -> list[int | None]:
        return [self.watermark_ms, self.producer_ms, self.next_start_ms]

    @classmethod
    def from_json(cls, data: list[int | None]) -> SiteClock:
        watermark_ms, producer_ms, next_start_ms = data
        return cls(int(watermark_ms), producer_ms, int(next_start_ms))  # type: ignore[arg-type]


def accept_watermark(clock: SiteClock | None, held_ms: int | None, watermark_ms: int, producer_ms: int | None,
                     max_skew_ms: int, max_jump_ms: int,
                     window_ms: int) -> tuple[Rejection | None, SiteClock | None, int | None]:
    """(rejection, clock, held watermark) after one watermark record.

    - Ahead of its own record's Kafka timestamp by more than `max_skew_ms`: a producer whose
      clocks disagree; rejected (`clock_skew`), nothing moves.
    - Not newer than the current watermark: nothing changes.
    - Within `max_jump_ms` of the current one: the site's event time moves to it.
    - The site's first watermark on this partition, or a jump beyond `max_jump_ms`, is only
      *held*: it takes effect when the next watermark confirms it (newer, and within
      `max_jump_ms` of it). A real producer sends one every tick, so this costs one tick once;
      a single record claiming year 9999, in both its timestamps, moves nothing.
    The first confirmed watermark starts window closing at the window the held one falls in
    (the same on every partition), so no window from before the data is emitted.
    """
    if producer_ms is not None and watermark_ms - producer_ms > max_skew_ms:
        return Rejection(CLOCK_SKEW, f"watermark {iso_ms(watermark_ms)} is {(watermark_ms - producer_ms) / 1000:.3f} s "
                                     f"ahead of its record's timestamp {iso_ms(producer_ms)}"), clock, held_ms
    if clock is not None and watermark_ms <= clock.watermark_ms:
        return None, clock, held_ms
    if clock is not None and watermark_ms - clock.watermark_ms <= max_jump_ms:
        return None, replace(clock, watermark_ms=watermark_ms, producer_ms=producer_ms), None
    if held_ms is None or not 0 < watermark_ms - held_ms <= max_jump_ms:
        return None, clock, watermark_ms  # held until confirmed
    if clock is None:
        return None, SiteClock(watermark_ms, producer_ms, held_ms - held_ms % window_ms), None
    return None, replace(clock, watermark_ms=watermark_ms, producer_ms=producer_ms), None


def sample_time_verdict(clock: SiteClock | None, ts_ms: int, producer_ms: int | None, max_skew_ms: int,
                        max_pause_ms: int) -> Rejection | None:
    """Is a sample's event time believable? Ahead of the site's watermark by more than
    `max_skew_ms` plus the producer time passed since that watermark (at most `max_pause_ms`,
    so a record claiming year 9999 in both timestamps is still caught) is `clock_skew`.
    Before the site's first watermark on this partition, the sample is judged against its
    record's own Kafka timestamp. Samples behind the watermark are not rejected here: they are
    late, which the windows count."""
    if clock is None:
        if producer_ms is None or ts_ms - producer_ms <= max_skew_ms:
            return None
        return Rejection(CLOCK_SKEW, f"ts {iso_ms(ts_ms)} is {(ts_ms - producer_ms) / 1000:.3f} s ahead of its "
                                     f"record's timestamp {iso_ms(producer_ms)} (no watermark yet); "
                                     f"allowed: {max_skew_ms / 1000:g} s")
    idle_ms = 0
    if producer_ms is not None and clock.producer_ms is not None:
        idle_ms = min(max(0, producer_ms - clock.producer_ms), max_pause_ms)
    ahead_ms = ts_ms - clock.watermark_ms
    if ahead_ms - idle_ms <= max_skew_ms:
        return None
    return Rejection(CLOCK_SKEW, f"ts {iso_ms(ts_ms)} is {ahead_ms / 1000:.3f} s ahead of the site's watermark "
                                 f"{iso_ms(clock.watermark_ms)}; allowed: {max_skew_ms / 1000:g} s + "
                                 f"{idle_ms / 1000:.3f} s of producer time since")


def due_windows(clock: SiteClock, window_ms: int, lateness_ms: int, max_gap_windows: int) -> tuple[list[int], SiteClock]:
    """Starts of the windows the watermark has closed (end + lateness <= watermark), oldest
    first, and the clock after them. A jump of more than `max_gap_windows` skips ahead instead
    of emitting a year of empty windows (the same skip on every partition)."""
    horizon = clock.watermark_ms - lateness_ms  # windows ending at or before this are closed
    start = clock.next_start_ms
    if horizon - start > max_gap_windows * window_ms:
        start = horizon - horizon % window_ms - window_ms
    starts = []
    while start + window_ms <= horizon:
        starts.append(start)
        start += window_ms
    return starts, (clock if start == clock.next_start_ms else replace(clock, next_start_ms=start))
