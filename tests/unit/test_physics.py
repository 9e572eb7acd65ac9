"""Physics functions against hand-computed values from the domain reference."""

import math

import numpy as np
import pytest

from dcpulse.producers import physics as ph


def test_accelerator_power_is_idle_plus_dynamic_share() -> None:
    assert ph.accelerator_power_w(0.0, 80, 700) == 80
    assert ph.accelerator_power_w(1.0, 80, 700) == 700
    assert ph.accelerator_power_w(0.5, 80, 700) == pytest.approx(390)
    assert ph.accelerator_power_w(1.7, 80, 700) == 700  # utilisation is clipped to [0, 1]
    np.testing.assert_allclose(ph.accelerator_power_w(np.array([0.0, 0.25]), 100, 500, alpha=2), [100, 125])


def test_psu_efficiency_follows_titanium_points() -> None:
    np.testing.assert_allclose(ph.psu_efficiency([0.1, 0.2, 0.5, 1.0]), [0.90, 0.94, 0.96, 0.91])
    assert ph.psu_efficiency(0.35) == pytest.approx(0.95)
    # 4 supplies of 3 kW sharing 6 kW: each at 50 % load, 96 % efficient.
    assert ph.server_input_power_w(6000, 3000, 4) == pytest.approx(6000 / 0.95, rel=0.02)


def test_ups_loss_model() -> None:
    # a * rated + b * P + c * P^2 / rated = 0.01*1000 + 0.02*500 + 0.01*250 = 22.5
    assert ph.ups_loss_w(500, 1000, 0.01, 0.02, 0.01) == pytest.approx(22.5)


def test_coolant_delta_t_matches_domain_rules_of_thumb() -> None:
    # 1 L/min per kW of water: dT ~14.4 K; 1.5 L/min/kW: ~9.6 K.
    assert ph.coolant_delta_t_k(1000.0, 1.0) == pytest.approx(14.4, rel=0.01)
    assert ph.coolant_delta_t_k(1000.0, 1.5) == pytest.approx(9.6, rel=0.01)
    assert ph.coolant_delta_t_k(1000.0, 0.0) > 100  # no flow: a huge rise, never a ZeroDivisionError


def test_pump_power_example() -> None:
    # 1 MW at 1.5 L/min/kW and 2.5 bar, eta 0.6 -> ~10 kW (1 %).
    assert ph.pump_power_w(2.5e5, 1500.0, 0.6) == pytest.approx(10_417, rel=0.01)


def test_affinity_law_is_cubic() -> None:
    assert ph.affinity_power(1000.0, 0.5) == pytest.approx(125.0)


def test_first_order_lag() -> None:
    assert ph.first_order_lag(20.0, 30.0, dt_s=10.0, tau_s=10.0) == pytest.approx(20 + 10 * (1 - math.exp(-1)))
    assert ph.first_order_lag(20.0, 30.0, dt_s=1e6, tau_s=10.0) == pytest.approx(30.0)


def test_chiller_cop_is_reference_at_reference_point() -> None:
    assert ph.chiller_cop(6.67, 29.4, 1.0, 5.5) == pytest.approx(5.5, rel=0.01)
    assert ph.chiller_capacity_factor(6.67, 29.4) == pytest.approx(1.0, abs=0.01)
    # Colder condenser water -> better COP; warmer -> worse.
    assert ph.chiller_cop(6.67, 24.0, 1.0, 5.5) > 5.5 > ph.chiller_cop(6.67, 35.0, 1.0, 5.5)
    # P = Q / COP at full load and reference conditions.
    assert ph.chiller_power_w(1e6, 6.67, 29.4, 1e6, 5.5) == pytest.approx(1e6 / 5.5, rel=0.01)
    assert ph.chiller_power_w(0.0, 6.67, 29.4, 1e6, 5.5) == 0.0


def test_economiser_share() -> None:
    assert ph.economiser_share(20.0, 28.0) == 1.0
    assert ph.economiser_share(29.5, 28.0) == pytest.approx(0.5)
    assert ph.economiser_share(40.0, 28.0) == 0.0


def test_water() -> None:
    assert ph.evaporation_l(100.0) == pytest.approx(150.0)
    assert ph.make_up_water_l(150.0, 4.0) == pytest.approx(200.0)


def test_weather_peaks_in_the_afternoon() -> None:
    hot_dry, hot_wet = ph.daily_weather(15.0, 24.0, 4.0, 4.0, 1.0)
    cold_dry, cold_wet = ph.daily_weather(3.0, 24.0, 4.0, 4.0, 1.0)
    assert (hot_dry, cold_dry) == (pytest.approx(28.0), pytest.approx(20.0))
    assert hot_wet < hot_dry and cold_wet < cold_dry
    assert hot_dry - hot_wet > cold_dry - cold_wet
