"""The plant's physics as pure functions: IT load -> heat -> coolant temperatures -> cooling power.

Every function works on floats and on numpy arrays alike. Figures and formulas follow the
project's domain reference (ASHRAE TC9.9, OCP, EnergyPlus DOE-2 chiller curves, APC WP113,
80 PLUS); the defaults live in sitemodel.py, not here.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

WATER_CP_J_PER_KG_K = 4186.0
WATER_DENSITY_KG_PER_L = 0.997
AIR_CP_J_PER_KG_K = 1006.0
AIR_DENSITY_KG_PER_M3 = 1.18

# 80 PLUS Titanium (230 V redundant) efficiency at 10/20/50/100 % load.
PSU_LOAD_POINTS = (0.0, 0.10, 0.20, 0.50, 1.00)
PSU_EFFICIENCY = (0.80, 0.90, 0.94, 0.96, 0.91)

# EnergyPlus "DOE-2 Centrifugal/5.50COP" curves; x = leaving chilled water, y = entering condenser.
CHILLER_X_RANGE = (5.0, 10.0)
CHILLER_Y_RANGE = (24.0, 35.0)

Number = float | NDArray[np.float64]


def accelerator_power_w(util: ArrayLike, idle_w: float, tdp_w: float, alpha: float = 1.0) -> Number:
    """P = P_idle + (P_cap - P_idle) * u^alpha, u in [0, 1] (SM/AI-core activity, not GPU_UTIL)."""
    u = np.clip(np.asarray(util, dtype=float), 0.0, 1.0)
    return idle_w + (tdp_w - idle_w) * u**alpha


def psu_efficiency(load_fraction: ArrayLike) -> Number:
    """Titanium curve, linear between the 80 PLUS test points."""
    return np.interp(np.asarray(load_fraction, dtype=float), PSU_LOAD_POINTS, PSU_EFFICIENCY)


def server_input_power_w(dc_load_w: ArrayLike, psu_rated_w: float, psu_count: int) -> Number:
    """AC input for a DC load shared by `psu_count` redundant supplies (N+N: each <= 50 %)."""
    dc = np.asarray(dc_load_w, dtype=float)
    return dc / psu_efficiency(dc / (psu_rated_w * psu_count))


def ups_loss_w(p_out_w: ArrayLike, p_rated_w: float, a: float, b: float, c: float) -> Number:
    """APC WP113 loss model: no-load + proportional + square-law terms."""
    p = np.asarray(p_out_w, dtype=float)
    return a * p_rated_w + b * p + c * p**2 / p_rated_w


def heat_split(p_it_w: ArrayLike, f_liq: float) -> tuple[Number, Number]:
    """(to liquid, to air): cold plates take f_liq of the heat, the rest goes to room air."""
    p = np.asarray(p_it_w, dtype=float)
    return p * f_liq, p * (1.0 - f_liq)


def water_mass_flow_kg_s(flow_l_min: ArrayLike) -> Number:
    return np.asarray(flow_l_min, dtype=float) * WATER_DENSITY_KG_PER_L / 60.0


def coolant_delta_t_k(heat_w: ArrayLike, flow_l_min: ArrayLike, cp: float = WATER_CP_J_PER_KG_K) -> Number:
    """Q = m_dot * c_p * dT, solved for dT. Zero flow is clamped to a trickle, not a division by 0."""
    m_dot = np.maximum(water_mass_flow_kg_s(flow_l_min), 1e-3)
    return np.asarray(heat_w, dtype=float) / (m_dot * cp)


def first_order_lag(current: ArrayLike, target: ArrayLike, dt_s: float, tau_s: float) -> Number:
    """Exact step of C dT/dt = (target - T) * m_dot c_p, i.e. a lag with time constant tau."""
    weight = 1.0 - math.exp(-dt_s / tau_s) if tau_s > 0 else 1.0
    cur = np.asarray(current, dtype=float)
    return cur + (np.asarray(target, dtype=float) - cur) * weight


def loop_time_constant_s(thermal_mass_j_per_k: float, flow_l_min: float) -> float:
    """tau = C / (m_dot c_p) of a lumped coolant loop."""
    return thermal_mass_j_per_k / max(float(water_mass_flow_kg_s(flow_l_min)) * WATER_CP_J_PER_KG_K, 1e-6)


def chip_temperature_c(t_supply_c: ArrayLike, delta_t_k: ArrayLike, power_w: ArrayLike, r_th_k_per_w: ArrayLike) -> Number:
    """T_chip = T_sup + dT/2 + P * R_th (cold plate sees the mean coolant temperature)."""
    return (np.asarray(t_supply_c, dtype=float) + np.asarray(delta_t_k, dtype=float) / 2.0
            + np.asarray(power_w, dtype=float) * np.asarray(r_th_k_per_w, dtype=float))


def pump_power_w(dp_pa: ArrayLike, flow_l_min: ArrayLike, efficiency: float) -> Number:
    """Hydraulic power over pump efficiency: P = dP * V_dot / eta."""
    return np.asarray(dp_pa, dtype=float) * np.asarray(flow_l_min, dtype=float) / 60_000.0 / efficiency


def affinity_power(rated_w: ArrayLike, speed_fraction: ArrayLike) -> Number:
    """Fans and pumps: P scales with speed cubed (Q ~ N, H ~ N^2, P ~ N^3)."""
    return np.asarray(rated_w, dtype=float) * np.clip(np.asarray(speed_fraction, dtype=float), 0.0, 1.2) ** 3


def air_volume_flow_m3_s(heat_w: ArrayLike, delta_t_k: float) -> Number:
    return np.asarray(heat_w, dtype=float) / (AIR_DENSITY_KG_PER_M3 * AIR_CP_J_PER_KG_K * delta_t_k)


def chiller_cop(t_chw_leave_c: float, t_cond_in_c: float, plr: float, cop_ref: float) -> float:
    """COP from the DOE-2 curves inside their valid range, a Carnot fraction outside it."""
    x, y = t_chw_leave_c, t_cond_in_c
    if CHILLER_X_RANGE[0] <= x <= CHILLER_X_RANGE[1] and CHILLER_Y_RANGE[0] <= y <= CHILLER_Y_RANGE[1]:
        eirft = (0.933679 - 0.058199 * x + 0.0044994 * x * x + 0.0024295 * y
                 + 0.00048589 * y * y - 0.0012147 * x * y)
        p = min(max(plr, 0.1), 1.0)
        eirfplr = 0.222903 + 0.313387 * p + 0.463710 * p * p
        return cop_ref * p / (eirft * eirfplr) if p > 0 else cop_ref
    t_evap = x + 273.15 - 2.0
    t_cond = y + 273.15 + 3.0
    return 0.5 * t_evap / max(t_cond - t_evap, 1.0)


def chiller_capacity_factor(t_chw_leave_c: float, t_cond_in_c: float) -> float:
    """CAPFT: available capacity relative to the reference point."""
    x = min(max(t_chw_leave_c, CHILLER_X_RANGE[0]), CHILLER_X_RANGE[1])
    y = min(max(t_cond_in_c, CHILLER_Y_RANGE[0]), CHILLER_Y_RANGE[1])
    return (0.257183 + 0.038794 * x - 0.00021648 * x * x + 0.046739 * y
            - 0.00094024 * y * y - 0.00034249 * x * y)


def chiller_power_w(load_w: float, t_chw_leave_c: float, t_cond_in_c: float, capacity_w: float, cop_ref: float) -> float:
    """Electrical input of a chiller carrying `load_w`: P = Q / COP(x, y, PLR)."""
    if load_w <= 0:
        return 0.0
    plr = load_w / (capacity_w * chiller_capacity_factor(t_chw_leave_c, t_cond_in_c))
    return load_w / chiller_cop(t_chw_leave_c, t_cond_in_c, plr, cop_ref)


def tower_leaving_water_c(t_wet_bulb_c: float, approach_k: float) -> float:
    """A cooling tower cannot cool water below wet bulb + approach."""
    return t_wet_bulb_c + approach_k


def dry_cooler_leaving_water_c(t_dry_bulb_c: float, approach_k: float) -> float:
    return t_dry_bulb_c + approach_k


def economiser_share(achievable_c: float, required_c: float, band_k: float = 3.0) -> float:
    """Share of the load free cooling carries: 1 if the heat rejection reaches the required
    supply temperature, falling linearly to 0 over `band_k` above it (partial economiser)."""
    if achievable_c <= required_c:
        return 1.0
    return max(0.0, 1.0 - (achievable_c - required_c) / band_k)


def evaporation_l(heat_rejected_kwh: ArrayLike, litres_per_kwh: float = 1.5) -> Number:
    """Water evaporated by a wet tower for the heat it rejected."""
    return np.asarray(heat_rejected_kwh, dtype=float) * litres_per_kwh


def make_up_water_l(evaporated_l: ArrayLike, cycles_of_concentration: float) -> Number:
    """Make-up = evaporation + blow-down = E * CoC / (CoC - 1)."""
    return np.asarray(evaporated_l, dtype=float) * cycles_of_concentration / (cycles_of_concentration - 1.0)


def daily_weather(hour_of_day: float, mean_dry_bulb_c: float, amplitude_k: float,
                  mean_depression_k: float, depression_amplitude_k: float) -> tuple[float, float]:
    """(dry bulb, wet bulb) with the afternoon peak at 15:00 and the wet-bulb depression widest
    in the afternoon too (drier air when warmer)."""
    phase = math.cos(2 * math.pi * (hour_of_day - 15.0) / 24.0)
    dry = mean_dry_bulb_c + amplitude_k * phase
    depression = max(0.5, mean_depression_k + depression_amplitude_k * phase)
    return dry, dry - depression
