"""Energy and PUE maths (pure): registers, boundary interpolation, resets, roll-ups.

PUE over a window is E_facility / E_IT, both energies over the same interval, taken from
cumulative registers interpolated linearly at the window boundaries. Times are integer
milliseconds since the epoch. A roll-up is sum over
sum of the minute energies: never a mean of ratios (domain reference, CIFE WP131).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

Sample = tuple[int, float]  # (epoch milliseconds, value)
MS_PER_HOUR = 3_600_000


def unwrap_register(samples: Sequence[Sample]) -> list[Sample]:
    """Make a cumulative register monotonic across counter resets.

    A drop means the meter restarted from zero after the previous sample: the energy between
    the two samples is taken as the new reading (what accumulated since the reset); the part
    between the previous sample and the reset itself is unknowable and not invented.
    """
    out: list[Sample] = []
    offset = 0.0
    previous = None
    for ts, value in samples:
        if previous is not None and value < previous:
            offset += previous
        out.append((ts, value + offset))
        previous = value
    return out


def value_at(samples: Sequence[Sample], t: int) -> float | None:
    """Linear interpolation of a (time-sorted) series at t; None unless t is bracketed."""
    if not samples or t < samples[0][0] or t > samples[-1][0]:
        return None
    i = bisect_left(samples, (t, float("-inf")))
    if samples[i][0] == t:
        return samples[i][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def window_energy(samples: Sequence[Sample], start: int, end: int) -> float | None:
    """Register delta over [start, end), resets handled; None if a boundary is not bracketed."""
    series = unwrap_register(sorted(samples))
    at_start, at_end = value_at(series, start), value_at(series, end)
    if at_start is None or at_end is None:
        return None
    return at_end - at_start


def integrate_power(samples: Sequence[Sample], start: int, end: int) -> tuple[float, int]:
    """Fallback where no register exists: trapezoidal integral of power (kW) over the part of
    [start, end) the samples cover. Returns (kWh, covered milliseconds)."""
    series = sorted(samples)
    kwh = 0.0
    covered = 0
    for (t0, p0), (t1, p1) in zip(series, series[1:]):
        lo, hi = max(t0, start), min(t1, end)
        if hi <= lo:
            continue
        pa = p0 + (p1 - p0) * (lo - t0) / (t1 - t0)
        pb = p0 + (p1 - p0) * (hi - t0) / (t1 - t0)
        kwh += (pa + pb) / 2 * (hi - lo) / MS_PER_HOUR
        covered += hi - lo
    return kwh, covered


@dataclass(frozen=True)
class EnergySum:
    """Sum of one category's meters over one window, with what was there to sum."""

    kwh: float
    present: int  # meters whose energy could be computed
    expected: int  # meters known to the site

    @property
    def coverage(self) -> float:
        return self.present / self.expected if self.expected else 0.0


def sum_meters(energies: Sequence[float | None], expected: int) -> EnergySum:
    """Exact (fsum) sum of the meters that have a value: the same bits in any order."""
    present = [e for e in energies if e is not None]
    return EnergySum(math.fsum(present), len(present), max(expected, len(present)))


def quality(coverage: float, complete: float = 0.99, usable: float = 0.9) -> str:
    """complete | partial | insufficient: a partial window is published, flagged, never as whole."""
    if coverage >= complete:
        return "complete"
    return "partial" if coverage >= usable else "insufficient"


def pue(facility: EnergySum, it: EnergySum) -> tuple[float | None, float]:
    """(PUE or None, coverage): coverage is the weaker of the two sides."""
    coverage = min(facility.coverage, it.coverage)
    if facility.present == 0 or it.kwh <= 0:
        return None, coverage
    return facility.kwh / it.kwh, coverage


@dataclass(frozen=True)
class WindowTotals:
    """One entity's additive quantities (energies, volumes) over one window, and its coverage."""

    start: int  # ms
    values: dict[str, float]
    coverage: float


def rollup(windows: Sequence[WindowTotals], start: int, length_ms: int, window_ms: int) -> WindowTotals:
    """Sum over sum of the windows inside [start, start + length): a roll-up ratio is then the
    ratio of the sums, never a mean of ratios. Coverage counts a missing window as zero, so a
    roll-up with holes is flagged like any other partial window."""
    inside = [w for w in windows if start <= w.start < start + length_ms]
    names = sorted({name for w in inside for name in w.values})
    expected = length_ms // window_ms
    return WindowTotals(
        start=start,
        values={name: math.fsum(w.values.get(name, 0.0) for w in inside) for name in names},
        coverage=math.fsum(w.coverage for w in inside) / expected if expected else 0.0,
    )


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence: deterministic, no interpolation."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
