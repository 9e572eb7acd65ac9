"""Energy and PUE maths against hand-computed values."""

import pytest

from dcpulse.streams.energy import (EnergySum, WindowTotals, integrate_power, percentile, pue, quality, rollup,
                                    sum_meters, unwrap_register, value_at, window_energy)


def test_boundary_interpolation() -> None:
    # Register 100 kWh at t=55, 106 at t=65: at t=60 it reads 103. Window [60, 120): 103 -> 139.
    samples = [(55.0, 100.0), (65.0, 106.0), (115.0, 136.0), (125.0, 142.0)]
    assert value_at(samples, 60.0) == pytest.approx(103.0)
    assert window_energy(samples, 60.0, 120.0) == pytest.approx(139.0 - 103.0)


def test_exact_sample_on_the_boundary() -> None:
    assert window_energy([(60.0, 5.0), (90.0, 6.0), (120.0, 8.0)], 60.0, 120.0) == pytest.approx(3.0)


def test_unbracketed_boundary_gives_no_energy() -> None:
    # The meter's first sample is after the window start: no honest energy for this window.
    assert window_energy([(70.0, 1.0), (130.0, 2.0)], 60.0, 120.0) is None
    assert window_energy([(50.0, 1.0), (110.0, 2.0)], 60.0, 120.0) is None
    assert window_energy([], 60.0, 120.0) is None


def test_counter_reset_is_unwrapped_not_rejected() -> None:
    # 1000 -> 1001 -> reset -> 0.5 -> 1.5: energy after the reset counts from zero.
    assert unwrap_register([(0, 1000.0), (10, 1001.0), (20, 0.5), (30, 1.5)]) == [
        (0, 1000.0), (10, 1001.0), (20, 1001.5), (30, 1002.5)]
    assert window_energy([(0, 1000.0), (10, 1001.0), (20, 0.5), (30, 1.5)], 0.0, 30.0) == pytest.approx(2.5)


def test_unsorted_samples_are_sorted_first() -> None:
    assert window_energy([(115.0, 136.0), (55.0, 100.0), (125.0, 142.0), (65.0, 106.0)], 60, 120) == pytest.approx(36)


def test_integrated_power_fallback() -> None:
    # 60 kW flat over a minute = 1 kWh; samples cover only [70, 120) of [60, 120).
    kwh, covered = integrate_power([(70.0, 60.0), (130.0, 60.0)], 60.0, 120.0)
    assert kwh == pytest.approx(60 * 50 / 3600) and covered == 50.0
    ramp, _ = integrate_power([(0.0, 0.0), (3600.0, 10.0)], 0.0, 3600.0)
    assert ramp == pytest.approx(5.0)


def test_missing_meters_lower_coverage() -> None:
    it = sum_meters([10.0, None, 12.0, 8.0], expected=4)
    assert it == EnergySum(30.0, 3, 4) and it.coverage == 0.75
    assert quality(it.coverage) == "insufficient"
    assert quality(0.95) == "partial" and quality(1.0) == "complete"


def test_pue_is_energy_over_energy_and_needs_both_sides() -> None:
    value, coverage = pue(EnergySum(13.0, 1, 1), EnergySum(10.0, 4, 4))
    assert value == pytest.approx(1.3) and coverage == 1.0
    assert pue(EnergySum(0.0, 0, 1), EnergySum(10.0, 4, 4))[0] is None
    assert pue(EnergySum(1.0, 1, 1), EnergySum(0.0, 0, 4))[0] is None


def test_rollup_is_sum_over_sum_never_mean_of_ratios() -> None:
    minutes = [WindowTotals(0.0, 12.0, 10.0, 1.0), WindowTotals(60.0, 3.0, 2.0, 1.0)]
    total = rollup(minutes, 0.0, 120.0)
    assert total.facility_kwh / total.it_kwh == pytest.approx(15 / 12)  # 1.25, not (1.2 + 1.5) / 2
    assert total.coverage == 1.0


def test_rollup_with_a_missing_minute_is_partial() -> None:
    minutes = [WindowTotals(float(60 * i), 1.2, 1.0, 1.0) for i in range(15) if i != 7]
    total = rollup(minutes, 0.0, 900.0)
    assert total.coverage == pytest.approx(14 / 15)
    assert total.it_kwh == pytest.approx(14.0)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0 and percentile(values, 100) == 100.0 and percentile([0.3], 95) == 0.3
