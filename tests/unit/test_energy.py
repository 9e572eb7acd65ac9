"""Energy and PUE maths (streams/energy.py) against hand-computed values. Times are epoch ms."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.streams.energy import (
    EnergySum,
    WindowTotals,
    integrate_power,
    percentile,
    pue,
    quality,
    ratio,
    rollup,
    sum_meters,
    unwrap_register,
    value_at,
    window_energy,
)

S = 1000  # one second in ms
MINUTE = 60 * S


def test_boundary_interpolation() -> None:
    # Register 100 kWh at t=55 s, 106 at t=65 s: at t=60 s it reads 103. Window [60, 120): 103 -> 139.
    samples = [(55 * S, 100.0), (65 * S, 106.0), (115 * S, 136.0), (125 * S, 142.0)]
    assert value_at(samples, 60 * S) == pytest.approx(103.0)
    assert window_energy(samples, 60 * S, 120 * S) == pytest.approx(139.0 - 103.0)


def test_exact_sample_on_the_boundary() -> None:
    assert value_at([(60 * S, 5.0), (90 * S, 6.0)], 60 * S) == 5.0
    assert window_energy([(60 * S, 5.0), (90 * S, 6.0), (120 * S, 8.0)], 60 * S, 120 * S) == 3.0


def test_unbracketed_boundary_gives_no_energy() -> None:
    # The meter's first sample is after the window start: no honest energy for this window.
    assert window_energy([(70 * S, 1.0), (130 * S, 2.0)], 60 * S, 120 * S) is None
    assert window_energy([(50 * S, 1.0), (110 * S, 2.0)], 60 * S, 120 * S) is None
    assert window_energy([], 60 * S, 120 * S) is None
    assert value_at([], 0) is None


def test_counter_reset_is_unwrapped_not_rejected() -> None:
    # 1000 -> 1001 -> reset -> 0.5 -> 1.5: energy after the reset counts from zero.
    assert unwrap_register([(0, 1000.0), (10, 1001.0), (20, 0.5), (30, 1.5)]) == [
        (0, 1000.0), (10, 1001.0), (20, 1001.5), (30, 1002.5)]
    assert window_energy([(0, 1000.0), (10, 1001.0), (20, 0.5), (30, 1.5)], 0, 30) == pytest.approx(2.5)


def test_unsorted_samples_are_sorted_first() -> None:
    samples = [(115 * S, 136.0), (55 * S, 100.0), (125 * S, 142.0), (65 * S, 106.0)]
    assert window_energy(samples, 60 * S, 120 * S) == pytest.approx(36.0)


def test_integrated_power_fallback() -> None:
    # 60 kW flat; samples cover only [70 s, 120 s) of [60 s, 120 s).
    kwh, covered = integrate_power([(70 * S, 60.0), (130 * S, 60.0)], 60 * S, 120 * S)
    assert kwh == pytest.approx(60 * 50 / 3600) and covered == 50 * S
    ramp, covered = integrate_power([(0, 0.0), (3600 * S, 10.0)], 0, 3600 * S)
    assert ramp == pytest.approx(5.0) and covered == 3600 * S
    assert integrate_power([(10, 1.0), (10, 2.0)], 0, 20) == (0.0, 0)  # two samples at one instant
    assert integrate_power([(0, 5.0)], 0, MINUTE) == (0.0, 0)


def test_missing_meters_lower_coverage() -> None:
    it = sum_meters([10.0, None, 12.0, 8.0], expected=4)
    assert it == EnergySum(30.0, 3, 4) and it.coverage == 0.75
    assert sum_meters([1.0, 2.0], expected=1).expected == 2  # never more present than expected
    assert EnergySum(0.0, 0, 0).coverage == 0.0
    assert quality(it.coverage) == "insufficient"
    assert quality(0.95) == "partial" and quality(1.0) == "complete" and quality(0.99) == "complete"
    assert quality(0.5, complete=0.6, usable=0.4) == "partial"


def test_pue_is_energy_over_energy_and_needs_both_sides() -> None:
    value, coverage = pue(EnergySum(13.0, 1, 1), EnergySum(10.0, 4, 4))
    assert value == pytest.approx(1.3) and coverage == 1.0
    assert pue(EnergySum(0.0, 0, 1), EnergySum(10.0, 4, 4))[0] is None
    assert pue(EnergySum(1.0, 1, 1), EnergySum(0.0, 0, 4))[0] is None
    assert pue(EnergySum(13.0, 1, 1), EnergySum(10.0, 3, 4))[1] == 0.75  # the weaker side
    assert ratio(3.0, 2.0) == 1.5 and ratio(3.0, 0.0) is None and ratio(3.0, -1.0) is None


def test_rollup_is_sum_over_sum_never_mean_of_ratios() -> None:
    minutes = [WindowTotals(0, {"facility_kwh": 12.0, "it_kwh": 10.0}, 1.0),
               WindowTotals(MINUTE, {"facility_kwh": 3.0, "it_kwh": 2.0}, 1.0)]
    total = rollup(minutes, 0, 2 * MINUTE, MINUTE)
    assert total.values == {"facility_kwh": 15.0, "it_kwh": 12.0}
    assert total.values["facility_kwh"] / total.values["it_kwh"] == pytest.approx(15 / 12)  # not (1.2 + 1.5) / 2
    assert (total.start, total.coverage) == (0, 1.0)


def test_rollup_with_a_missing_minute_is_partial_and_takes_only_its_own_minutes() -> None:
    minutes = [WindowTotals(i * MINUTE, {"it_kwh": 1.0}, 1.0) for i in range(-1, 16) if i != 7]
    total = rollup(minutes, 0, 15 * MINUTE, MINUTE)
    assert total.coverage == pytest.approx(14 / 15)
    assert total.values == {"it_kwh": 14.0}  # minutes -1 and 15 are outside


def test_rollup_of_a_series_missing_in_some_minutes() -> None:
    minutes = [WindowTotals(0, {"a": 1.0}, 1.0), WindowTotals(MINUTE, {"a": 2.0, "b": 5.0}, 0.5)]
    total = rollup(minutes, 0, 2 * MINUTE, MINUTE)
    assert total.values == {"a": 3.0, "b": 5.0} and total.coverage == 0.75


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0 and percentile(values, 100) == 100.0 and percentile([0.3], 95) == 0.3
    assert percentile(values, 0) == 1.0 and percentile([3.0, 1.0, 2.0], 50) == 2.0


# ---- properties ------------------------------------------------------------------------------

@st.composite
def register(draw) -> list[tuple[int, float]]:
    """A monotonic register sampled at increasing times (ms), 0..10 kWh per sample."""
    gaps = draw(st.lists(st.integers(1, 30 * S), min_size=2, max_size=30))
    steps = draw(st.lists(st.floats(0, 10), min_size=len(gaps), max_size=len(gaps)))
    t, v, out = 0, 100.0, []
    for gap, step in zip(gaps, steps, strict=True):
        t += gap
        v += step
        out.append((t, v))
    return out


@given(register(), st.data())
def test_window_energies_add_up_over_adjacent_windows(samples, data) -> None:
    first, last = samples[0][0], samples[-1][0]
    a, b, c = sorted(data.draw(st.lists(st.integers(first, last), min_size=3, max_size=3)))
    whole = window_energy(samples, a, c)
    left, right = window_energy(samples, a, b), window_energy(samples, b, c)
    assert whole is not None and left is not None and right is not None
    assert left + right == pytest.approx(whole, rel=1e-9, abs=1e-9)
    assert whole >= -1e-9  # a monotonic register never gives negative energy


@given(register(), st.randoms())
def test_window_energy_does_not_depend_on_sample_order(samples, rng) -> None:
    shuffled = list(samples)
    rng.shuffle(shuffled)
    start, end = samples[0][0], samples[-1][0]
    assert window_energy(shuffled, start, end) == window_energy(samples, start, end)


@given(st.integers(2, 20), st.floats(0.01, 1000))
def test_flat_power_integrates_to_power_times_time(count, kw) -> None:
    samples = [(i * 10 * S, kw) for i in range(count)]
    kwh, covered = integrate_power(samples, 0, samples[-1][0])
    assert covered == samples[-1][0]
    assert kwh == pytest.approx(kw * covered / 3_600_000)


@given(st.lists(st.tuples(st.floats(0, 1e3), st.floats(0.001, 1e3)), min_size=1, max_size=15))
def test_a_rollup_ratio_is_the_ratio_of_sums(rows) -> None:
    minutes = [WindowTotals(i * MINUTE, {"facility_kwh": f + i_, "it_kwh": i_}, 1.0)
               for i, (f, i_) in enumerate(rows)]
    total = rollup(minutes, 0, len(rows) * MINUTE, MINUTE)
    assert total.values["facility_kwh"] == math.fsum(f + i_ for f, i_ in rows)
    assert total.values["it_kwh"] == math.fsum(i_ for _, i_ in rows)
    assert total.coverage == 1.0
