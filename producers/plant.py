"""One site's plant, stepped in time: IT load -> electrical chain -> heat -> cooling -> PUE.

`step_site` is pure: (layout, previous state, this tick's inputs) -> (new state, readings).
Energy bookkeeping closes by construction and is checked by the tests: every watt drawn at the
facility meter leaves as heat rejected outdoors, or as the heat-rejection fans' own power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dcpulse.producers import physics as ph
from dcpulse.producers.sitemodel import HallSpec, SiteSpec

RACK_NETWORK_W = 600.0  # two top-of-rack switches: on the PDU, not a server input
THROTTLE_FACTOR = 0.6  # clocks drop when hot: a throttled accelerator does ~60 % of the work
SW_THERMAL, HW_THERMAL = 0x20, 0x40  # NVML clock-event reason bits
FLOW_EXPONENT = 0.8  # cold-plate convection ~ velocity^0.8 (Dittus-Boelter)
LOOP_SUPPLY_TAU_S = 180.0  # facility loops drift ~1 K/min when their chiller trips
CDU_SUPPLY_TAU_S = 60.0
AIR_HEAT_PER_SERVER_FALLBACK = 1.0

F = NDArray[np.float64]


@dataclass(frozen=True)
class HallLayout:
    spec: HallSpec
    rack_ids: list[str]
    server_ids: list[str]
    server_rack: NDArray[np.int64]  # rack index of each server
    rack_row: list[str]
    cdu_ids: list[str]
    rack_cdu: NDArray[np.int64]  # CDU index of each rack (liquid halls)
    cdu_design_flow_l_min: F
    cdu_design_kw: F
    crah_ids: list[str]
    design_air_w: float
    ups_rated_w: float


def hall_layout(hall: HallSpec) -> HallLayout:
    """Device ids: rack `h1-r02-k05`, server `h1-r02-k05-s03`, CDU `cdu-h1-01`, CRAH `crah-h1-01`."""
    rack_ids, rack_row = [], []
    for r in range(hall.rows):
        for k in range(hall.racks_per_row):
            rack_ids.append(f"{hall.name}-r{r + 1:02d}-k{k + 1:02d}")
            rack_row.append(f"{hall.name}-r{r + 1:02d}")
    server_ids = [f"{rack}-s{s + 1:02d}" for rack in rack_ids for s in range(hall.servers_per_rack)]
    server_rack = np.repeat(np.arange(hall.racks), hall.servers_per_rack)
    rack_kw = hall.design_it_kw() / hall.racks
    if hall.cooling == "liquid":
        rack_cdu = np.arange(hall.racks) // hall.racks_per_cdu
        cdu_kw = np.bincount(rack_cdu, minlength=hall.cdus) * rack_kw * hall.f_liq
        cdu_ids = [f"cdu-{hall.name}-{i + 1:02d}" for i in range(hall.cdus)]
    else:
        rack_cdu = np.zeros(hall.racks, dtype=np.int64)
        cdu_kw = np.zeros(0)
        cdu_ids = []
    design_it_w = hall.design_it_kw() * 1000.0
    return HallLayout(
        spec=hall, rack_ids=rack_ids, server_ids=server_ids, server_rack=server_rack,
        rack_row=rack_row, cdu_ids=cdu_ids, rack_cdu=rack_cdu,
        cdu_design_flow_l_min=cdu_kw * hall.cdu_flow_l_min_per_kw, cdu_design_kw=cdu_kw,
        crah_ids=[f"crah-{hall.name}-{i + 1:02d}" for i in range(hall.crah_units)],
        design_air_w=design_it_w * (1.0 - hall.liquid_share) + hall.racks * RACK_NETWORK_W,
        ups_rated_w=design_it_w * 1.25,
    )


@dataclass(frozen=True)
class HallFaults:
    """Multipliers and offsets a fault imposes on one hall this tick (1 / 0 = healthy)."""

    cdu_flow: F
    cdu_dp: F
    cdu_leaking: NDArray[np.bool_]
    cdu_pumps_failed: NDArray[np.int64]
    rack_inlet_k: F

    @staticmethod
    def healthy(layout: HallLayout) -> HallFaults:
        n = len(layout.cdu_ids)
        return HallFaults(np.ones(n), np.ones(n), np.zeros(n, bool), np.zeros(n, np.int64),
                          np.zeros(len(layout.rack_ids)))


@dataclass(frozen=True)
class HallState:
    cdu_supply_c: F
    cdu_return_c: F
    cdu_pressure_bar: F
    cdu_level_pct: F
    chip_c: F  # (servers, accelerators)


@dataclass(frozen=True)
class SiteState:
    halls: list[HallState]
    warm_loop_c: float  # facility water to the CDUs
    air_loop_c: float  # water to the CRAH coils


@dataclass(frozen=True)
class HallReadings:
    acc_util: F
    acc_power_w: F
    acc_temp_c: F
    acc_throttle: NDArray[np.int64]
    cpu_util: F
    host_w: F  # CPUs, memory, NICs: the non-accelerator compute components (ITUE)
    server_input_w: F
    server_fan_w: F
    inlet_c: F
    outlet_c: F
    pdu_out_w: F
    pdu_in_w: F
    ups_out_w: float
    ups_in_w: float
    q_liquid_w: float
    q_air_w: float
    cdu_supply_c: F
    cdu_return_c: F
    cdu_flow_l_min: F
    cdu_dp_bar: F
    cdu_pressure_bar: F
    cdu_level_pct: F
    cdu_pumps_running: NDArray[np.int64]
    cdu_pump_w: F
    cdu_leak: NDArray[np.bool_]
    crah_fan_w: float
    crah_supply_c: float
    crah_return_c: float


@dataclass(frozen=True)
class SiteReadings:
    halls: list[HallReadings]
    dry_bulb_c: float
    wet_bulb_c: float
    facility_w: float
    it_ups_out_w: float  # PUE category 1
    it_pdu_out_w: float  # category 2
    it_server_in_w: float  # category 3
    ups_loss_w: float
    pdu_loss_w: float
    chiller_w: float
    chiller_load_w: float
    chiller_running: bool
    chiller_demand_w: float  # the trim free cooling cannot carry: the chiller should run while > 0
    rejection_fan_w: float
    facility_pump_w: float
    facility_flow_l_min: float
    cdu_pump_w: float
    crah_fan_w: float
    misc_w: float
    heat_rejected_w: float
    rejection_leaving_c: float
    economiser_share: float
    make_up_l_s: float

    @property
    def cooling_w(self) -> float:
        return self.chiller_w + self.rejection_fan_w + self.facility_pump_w + self.cdu_pump_w + self.crah_fan_w

    @property
    def pue(self) -> float:
        """Instantaneous ground truth (category 1): never averaged, only for display and tests."""
        return self.facility_w / self.it_ups_out_w


def initial_state(layouts: list[HallLayout], site: SiteSpec) -> SiteState:
    halls = []
    for lay in layouts:
        n = len(lay.cdu_ids)
        h = lay.spec
        halls.append(HallState(
            cdu_supply_c=np.full(n, h.tcs_supply_c), cdu_return_c=np.full(n, h.tcs_supply_c + 5.0),
            cdu_pressure_bar=np.full(n, h.cdu_pressure_bar), cdu_level_pct=np.full(n, 100.0),
            chip_c=np.full((h.servers, h.server.accelerators), h.air_supply_c + 20.0),
        ))
    return SiteState(halls, warm_loop_c=_warm_loop_required(site), air_loop_c=_air_loop_required(site))


def _warm_loop_required(site: SiteSpec) -> float:
    liquid = [h.tcs_supply_c for h in site.halls if h.cooling == "liquid"]
    return (min(liquid) if liquid else 30.0) - site.plant.cdu_approach_k


def _air_loop_required(site: SiteSpec) -> float:
    return min(h.crah_water_c for h in site.halls)


def step_hall(lay: HallLayout, state: HallState, util: F, cpu_util: F, faults: HallFaults,
              warm_loop_c: float, air_loop_excess_k: float, site: SiteSpec, dt_s: float,
              leak_bar_per_s: float) -> tuple[HallState, HallReadings]:
    h, srv, acc = lay.spec, lay.spec.server, lay.spec.server.accelerator
    # Thermal throttling decided on last tick's chip temperature (the GPU reacts to what it feels).
    throttle = np.where(state.chip_c > acc.throttle_c + 5, HW_THERMAL,
                        np.where(state.chip_c > acc.throttle_c, SW_THERMAL, 0))
    eff_util = np.where(throttle > 0, util * THROTTLE_FACTOR, util)
    acc_w = ph.accelerator_power_w(eff_util, acc.idle_w, acc.tdp_w, acc.alpha)
    base_w = srv.base_w * (0.5 + 0.5 * cpu_util)
    # Air side first: inlet temperature drives server fan speed.
    crah_supply_c = h.air_supply_c + air_loop_excess_k
    inlet_c = crah_supply_c + h.recirculation_k + faults.rack_inlet_k[lay.server_rack]
    load = (acc_w.sum(axis=1) + base_w) / max(srv.max_dc_w() - srv.fan_max_w, 1.0)
    fan_speed = np.clip(0.3 + 0.6 * load + 0.04 * (inlet_c - 22.0), 0.3, 1.0)
    fan_w = ph.affinity_power(srv.fan_max_w, fan_speed)
    server_in = ph.server_input_power_w(acc_w.sum(axis=1) + base_w + fan_w, srv.psu_rated_w, srv.psu_count)
    q_liq_server, q_air_server = ph.heat_split(server_in, h.liquid_share)
    design_air_server = max(srv.max_dc_w() * 0.8 * (1 - h.liquid_share), AIR_HEAT_PER_SERVER_FALLBACK)
    outlet_c = inlet_c + h.crah_air_dt_k * (q_air_server / design_air_server) / fan_speed
    # Electrical chain: servers + network -> rack PDU -> hall UPS.
    pdu_out = np.bincount(lay.server_rack, weights=server_in, minlength=h.racks) + RACK_NETWORK_W
    pdu_in = pdu_out / (1.0 - site.plant.pdu_loss_fraction)
    ups_out = float(pdu_in.sum())
    a, b, c = h.ups_efficiency_coefficients
    ups_in = ups_out + float(ph.ups_loss_w(ups_out, lay.ups_rated_w, a, b, c))
    # Liquid loops.
    n_cdu = len(lay.cdu_ids)
    if n_cdu:
        q_rack_liq = np.bincount(lay.server_rack, weights=q_liq_server, minlength=h.racks)
        q_cdu = np.bincount(lay.rack_cdu, weights=q_rack_liq, minlength=n_cdu)
        flow = lay.cdu_design_flow_l_min * faults.cdu_flow
        supply_target = np.maximum(h.tcs_supply_c, warm_loop_c + site.plant.cdu_approach_k)
        supply = ph.first_order_lag(state.cdu_supply_c, supply_target, dt_s, CDU_SUPPLY_TAU_S)
        delta_t = ph.coolant_delta_t_k(q_cdu, flow)
        tau = np.array([ph.loop_time_constant_s(h.loop_thermal_mass_j_per_k_per_mw * kw / 1000.0, f)
                        for kw, f in zip(lay.cdu_design_kw, flow, strict=True)])
        ret = np.array([float(ph.first_order_lag(r, s + d, dt_s, t))
                        for r, s, d, t in zip(state.cdu_return_c, supply, delta_t, tau, strict=True)])
        dp = h.cdu_dp_bar * faults.cdu_flow**2 * faults.cdu_dp
        pump_w = ph.pump_power_w(dp * 1e5, flow, site.plant.pump_efficiency)
        pressure = np.where(faults.cdu_leaking, np.maximum(state.cdu_pressure_bar - leak_bar_per_s * dt_s, 0.5),
                            ph.first_order_lag(state.cdu_pressure_bar, h.cdu_pressure_bar, dt_s, 300.0))
        level = np.where(faults.cdu_leaking, np.maximum(state.cdu_level_pct - leak_bar_per_s * dt_s * 20, 0.0),
                         state.cdu_level_pct)
        rack_supply = supply[lay.rack_cdu][lay.server_rack]
        rack_dt = (ret - supply)[lay.rack_cdu][lay.server_rack]
        r_th = acc.r_th_k_per_w * faults.cdu_flow[lay.rack_cdu][lay.server_rack] ** -FLOW_EXPONENT
        chip_target = ph.chip_temperature_c(rack_supply[:, None], rack_dt[:, None], acc_w, r_th[:, None])
    else:
        q_cdu = supply = ret = flow = dp = pump_w = pressure = level = np.zeros(0)
        chip_target = inlet_c[:, None] + acc_w * acc.r_th_k_per_w
    chip = ph.first_order_lag(state.chip_c, chip_target, dt_s, 20.0)
    q_air = float(q_air_server.sum()) + h.racks * RACK_NETWORK_W + float((pdu_in - pdu_out).sum())
    air_flow = ph.air_volume_flow_m3_s(q_air, h.crah_air_dt_k)
    design_flow = ph.air_volume_flow_m3_s(lay.design_air_w, h.crah_air_dt_k)
    crah_fan_w = float(ph.affinity_power(h.crah_fan_w_per_m3_s * design_flow, max(air_flow / design_flow, 0.3)))
    new_state = HallState(supply, ret, pressure, level, chip)
    readings = HallReadings(
        acc_util=eff_util, acc_power_w=acc_w, acc_temp_c=chip, acc_throttle=throttle, cpu_util=cpu_util, host_w=base_w,
        server_input_w=server_in, server_fan_w=fan_w, inlet_c=inlet_c, outlet_c=outlet_c,
        pdu_out_w=pdu_out, pdu_in_w=pdu_in, ups_out_w=ups_out, ups_in_w=ups_in,
        q_liquid_w=float(q_cdu.sum()), q_air_w=q_air,
        cdu_supply_c=supply, cdu_return_c=ret, cdu_flow_l_min=flow, cdu_dp_bar=dp,
        cdu_pressure_bar=pressure, cdu_level_pct=level,
        cdu_pumps_running=np.maximum(h.cdu_pumps - faults.cdu_pumps_failed, 0),
        cdu_pump_w=pump_w, cdu_leak=faults.cdu_leaking.copy(),
        crah_fan_w=crah_fan_w, crah_supply_c=crah_supply_c, crah_return_c=crah_supply_c + h.crah_air_dt_k,
    )
    return new_state, readings


def step_site(site: SiteSpec, layouts: list[HallLayout], state: SiteState, utils: list[F],
              cpu_utils: list[F], faults: list[HallFaults], hour_of_day: float, dt_s: float,
              chiller_tripped: bool = False, leak_bar_per_s: float = 0.3 / 60) -> tuple[SiteState, SiteReadings]:
    plant, w = site.plant, site.weather
    dry, wet = ph.daily_weather(hour_of_day, w.mean_dry_bulb_c, w.daily_amplitude_k,
                                w.wet_bulb_depression_k, w.depression_amplitude_k)
    if plant.heat_rejection == "cooling_tower":
        leaving = ph.tower_leaving_water_c(wet, plant.tower_approach_k)
    else:
        leaving = ph.dry_cooler_leaving_water_c(dry, plant.dry_cooler_approach_k)
    achievable = leaving + plant.hx_approach_k
    warm_req, air_req = _warm_loop_required(site), _air_loop_required(site)
    air_excess = max(0.0, state.air_loop_c - air_req)
    hall_states, hall_readings = [], []
    for lay, hs, u, cu, f in zip(layouts, state.halls, utils, cpu_utils, faults, strict=True):
        ns, rd = step_hall(lay, hs, u, cu, f, state.warm_loop_c, air_excess, site, dt_s, leak_bar_per_s)
        hall_states.append(ns)
        hall_readings.append(rd)
    design_it_w = sum(h.design_it_kw() for h in site.halls) * 1000.0
    misc_w = plant.misc_fraction * design_it_w
    ups_loss = sum(r.ups_in_w - r.ups_out_w for r in hall_readings)
    cdu_pump_w = float(sum(r.cdu_pump_w.sum() for r in hall_readings))
    crah_fan_w = sum(r.crah_fan_w for r in hall_readings)
    warm_load = sum(r.q_liquid_w for r in hall_readings) + cdu_pump_w
    air_load = sum(r.q_air_w for r in hall_readings) + crah_fan_w + ups_loss + misc_w
    # Free cooling carries what the outdoor air allows; chillers trim the rest.
    chiller_load = chiller_w = chiller_demand = 0.0
    shares = []
    new_loop_c = {}
    design_heat = design_it_w * plant.design_margin
    for name, load, required, current in (("warm", warm_load, warm_req, state.warm_loop_c),
                                          ("air", air_load, air_req, state.air_loop_c)):
        share = ph.economiser_share(achievable, required)
        shares.append((share, load))
        trimmed = (1.0 - share) * load
        chiller_demand += trimmed  # what the plant asks of the chillers, tripped or not
        if chiller_tripped:
            target = max(required, achievable)
        else:
            target = required
            if trimmed > 0:
                chiller_load += trimmed
                # Tower bypass holds condenser water inside the chiller's envelope (>= 24 C).
                condenser_c = min(max(leaving, ph.CHILLER_Y_RANGE[0]), ph.CHILLER_Y_RANGE[1])
                chiller_w += ph.chiller_power_w(trimmed, required, condenser_c,
                                                design_heat * plant.chiller_margin, plant.chiller_cop_ref)
        new_loop_c[name] = float(ph.first_order_lag(current, target, dt_s, LOOP_SUPPLY_TAU_S))
    loads = sum(load for _, load in shares)
    economiser = sum(s * load for s, load in shares) / loads if loads else 1.0
    flow_l_min = (warm_load + air_load + chiller_w) / (ph.WATER_CP_J_PER_KG_K * plant.facility_range_k) \
        / ph.WATER_DENSITY_KG_PER_L * 60.0
    facility_pump_w = float(ph.pump_power_w(plant.facility_dp_bar * 1e5, flow_l_min, plant.pump_efficiency))
    heat_rejected = warm_load + air_load + chiller_w + facility_pump_w
    # Fans slow down when the outdoor air leaves more approach than the design needs.
    approach = plant.tower_approach_k if plant.heat_rejection == "cooling_tower" else plant.dry_cooler_approach_k
    dominant_req = warm_req if warm_load >= air_load else air_req
    spare = dominant_req - plant.hx_approach_k - (leaving - approach)
    speed = heat_rejected / design_heat * approach / max(spare, 0.1)
    rejection_fan_w = float(ph.affinity_power(plant.heat_rejection_fan_kw_per_kw * design_heat,
                                              min(max(speed, 0.2), 1.0)))
    ups_in = sum(r.ups_in_w for r in hall_readings)
    facility_w = ups_in + chiller_w + rejection_fan_w + facility_pump_w + cdu_pump_w + crah_fan_w + misc_w
    make_up = 0.0
    if plant.heat_rejection == "cooling_tower":
        evaporated_per_s = float(ph.evaporation_l(heat_rejected / 1000.0 / 3600.0, plant.evaporation_l_per_kwh))
        make_up = float(ph.make_up_water_l(evaporated_per_s, plant.cycles_of_concentration))
    readings = SiteReadings(
        halls=hall_readings, dry_bulb_c=dry, wet_bulb_c=wet, facility_w=facility_w,
        it_ups_out_w=sum(r.ups_out_w for r in hall_readings),
        it_pdu_out_w=float(sum(r.pdu_out_w.sum() for r in hall_readings)),
        it_server_in_w=float(sum(r.server_input_w.sum() for r in hall_readings)),
        ups_loss_w=ups_loss, pdu_loss_w=float(sum((r.pdu_in_w - r.pdu_out_w).sum() for r in hall_readings)),
        chiller_w=chiller_w, chiller_load_w=chiller_load, chiller_running=chiller_w > 0, chiller_demand_w=chiller_demand,
        rejection_fan_w=rejection_fan_w, facility_pump_w=facility_pump_w, facility_flow_l_min=flow_l_min,
        cdu_pump_w=cdu_pump_w, crah_fan_w=crah_fan_w, misc_w=misc_w, heat_rejected_w=heat_rejected,
        rejection_leaving_c=leaving, economiser_share=economiser, make_up_l_s=make_up,
    )
    return SiteState(hall_states, new_loop_c["warm"], new_loop_c["air"]), readings
