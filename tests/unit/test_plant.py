"""The plant model: energy balance, reference PUE bands that emerge from physics, fault signatures."""

import numpy as np
import pytest

from dcpulse.producers.plant import HallFaults, SiteReadings, hall_layout, initial_state, step_site
from dcpulse.producers.sitemodel import (AcceleratorModel, HallSpec, PlantSpec, ServerModel, SiteSpec,
                                         WeatherSpec, load_preset, preset_names)

H100 = AcceleratorModel(name="H100", tdp_w=700, idle_w=80)
# South-China-like weather, held constant: 24 C dry bulb, 20 C wet bulb.
WEATHER = WeatherSpec(mean_dry_bulb_c=24, daily_amplitude_k=0, wet_bulb_depression_k=4, depression_amplitude_k=0)


def warm_water_dlc_site() -> SiteSpec:
    """~8 MW direct-to-chip hall on W32 water and cooling towers (residual air on 24 C water)."""
    server = ServerModel(name="HGX DLC", accelerator=H100, fan_max_w=150)
    hall = HallSpec(name="h1", rows=10, racks_per_row=10, servers_per_rack=13, server=server,
                    cooling="liquid", f_liq=0.8, rack_provisioned_kw=120, crah_water_c=24, air_supply_c=27)
    return SiteSpec(name="dlc", source="reference", halls=[hall], weather=WEATHER)


def all_air_chiller_site() -> SiteSpec:
    """All-air hall on 7 C chilled water from a COP-5 chiller."""
    server = ServerModel(name="HGX air", accelerator=H100.model_copy(update={"r_th_k_per_w": 0.07}), fan_max_w=900)
    hall = HallSpec(name="h1", rows=10, racks_per_row=10, servers_per_rack=4, server=server,
                    cooling="air", f_liq=0, rack_provisioned_kw=40, crah_water_c=7)
    return SiteSpec(name="air", source="reference", halls=[hall], weather=WEATHER, plant=PlantSpec(chiller_cop_ref=5.0))


def run(site: SiteSpec, util: float = 0.8, steps: int = 60, faults=None, chiller_tripped: bool = False,
        hour: float = 3.0) -> SiteReadings:
    layouts = [hall_layout(h) for h in site.halls]
    state = initial_state(layouts, site)
    utils = [np.full((h.servers, h.server.accelerators), util) for h in site.halls]
    cpus = [np.full(h.servers, 0.5) for h in site.halls]
    hall_faults = faults(layouts) if faults else [HallFaults.healthy(lay) for lay in layouts]
    for _ in range(steps):
        state, readings = step_site(site, layouts, state, utils, cpus, hall_faults, hour, 10.0,
                                    chiller_tripped=chiller_tripped)
    return readings


def assert_energy_balance(rd: SiteReadings) -> None:
    # Every watt drawn leaves as heat rejected outdoors or as the heat-rejection fans' power...
    assert rd.facility_w == pytest.approx(rd.heat_rejected_w + rd.rejection_fan_w, rel=0.01)
    # ...and the facility meter equals IT plus each loss and plant load.
    parts = rd.it_pdu_out_w + rd.pdu_loss_w + rd.ups_loss_w + rd.cooling_w + rd.misc_w
    assert rd.facility_w == pytest.approx(parts, rel=0.01)
    assert rd.it_ups_out_w == pytest.approx(rd.it_pdu_out_w + rd.pdu_loss_w, rel=1e-9)
    assert rd.it_server_in_w < rd.it_pdu_out_w  # PDUs also feed the network switches


@pytest.mark.parametrize("factory", [warm_water_dlc_site, all_air_chiller_site])
@pytest.mark.parametrize("util", [0.1, 0.5, 0.9])
def test_energy_balance_closes(factory, util: float) -> None:
    assert_energy_balance(run(factory(), util=util))


@pytest.mark.parametrize("name", preset_names())
def test_energy_balance_closes_for_every_preset(name: str) -> None:
    assert_energy_balance(run(load_preset(name), steps=5, hour=15.0))


def test_warm_water_liquid_hall_lands_near_1_1() -> None:
    rd = run(warm_water_dlc_site())
    assert 1.05 <= rd.pue <= 1.15
    assert rd.economiser_share > 0.8  # mostly free cooling on W32


def test_all_air_chiller_hall_lands_in_1_35_to_1_5() -> None:
    rd = run(all_air_chiller_site())
    assert 1.35 <= rd.pue <= 1.5
    assert rd.chiller_running and rd.chiller_w > 0.1 * rd.it_ups_out_w


def test_pue_rises_at_low_load() -> None:
    assert run(warm_water_dlc_site(), util=0.1).pue > run(warm_water_dlc_site(), util=0.9).pue


def _cdu_fault(flow: float = 1.0, dp: float = 1.0, leak: bool = False, failed: int = 0):
    def make(layouts):
        faults = [HallFaults.healthy(lay) for lay in layouts]
        faults[0].cdu_flow[0] = flow
        faults[0].cdu_dp[0] = dp
        faults[0].cdu_leaking[0] = leak
        faults[0].cdu_pumps_failed[0] = failed
        return faults
    return make


def test_pump_failure_signature_flow_down_temperatures_up_throttling() -> None:
    site = warm_water_dlc_site()
    healthy = run(site, util=0.9).halls[0]
    failed = run(site, util=0.9, faults=_cdu_fault(flow=0.35, failed=1)).halls[0]
    assert failed.cdu_flow_l_min[0] == pytest.approx(0.35 * healthy.cdu_flow_l_min[0])
    assert failed.cdu_pumps_running[0] == healthy.cdu_pumps_running[0] - 1
    assert failed.cdu_return_c[0] > healthy.cdu_return_c[0] + 10
    lay = hall_layout(site.halls[0])
    on_cdu0 = lay.rack_cdu[lay.server_rack] == 0
    assert failed.acc_temp_c[on_cdu0].mean() > healthy.acc_temp_c[on_cdu0].mean() + 10
    assert (healthy.acc_throttle == 0).all()
    assert (failed.acc_throttle[on_cdu0] > 0).mean() > 0.5
    assert (failed.acc_throttle[~on_cdu0] == 0).all()  # other CDUs' racks are unaffected


def test_leak_signature_pressure_and_level_fall_sensor_trips() -> None:
    site = warm_water_dlc_site()
    healthy = run(site).halls[0]
    leaking = run(site, faults=_cdu_fault(leak=True)).halls[0]
    assert leaking.cdu_leak[0] and not healthy.cdu_leak.any()
    assert leaking.cdu_pressure_bar[0] < healthy.cdu_pressure_bar[0] - 0.2
    assert leaking.cdu_level_pct[0] < 100.0 == healthy.cdu_level_pct[0]


def test_filter_clog_signature_dp_up_flow_down() -> None:
    site = warm_water_dlc_site()
    healthy = run(site).halls[0]
    clogged = run(site, faults=_cdu_fault(flow=0.8, dp=2.2)).halls[0]
    assert clogged.cdu_dp_bar[0] > 1.3 * healthy.cdu_dp_bar[0]
    assert clogged.cdu_flow_l_min[0] < healthy.cdu_flow_l_min[0]


def test_chiller_trip_signature_chilled_loop_and_inlets_drift_up() -> None:
    site = all_air_chiller_site()
    healthy = run(site)
    tripped = run(site, chiller_tripped=True, steps=12)  # two minutes
    assert tripped.chiller_w == 0 and not tripped.chiller_running
    assert tripped.halls[0].inlet_c.mean() > healthy.halls[0].inlet_c.mean() + 2
    assert tripped.facility_w < healthy.facility_w  # plant power drops


def test_hot_spot_lifts_one_rack() -> None:
    def hot(layouts):
        faults = [HallFaults.healthy(lay) for lay in layouts]
        faults[0].rack_inlet_k[3] = 10.0
        return faults
    site = all_air_chiller_site()
    rd = run(site, faults=hot, steps=3).halls[0]
    lay = hall_layout(site.halls[0])
    in_rack = lay.server_rack == 3
    assert rd.inlet_c[in_rack].mean() == pytest.approx(rd.inlet_c[~in_rack].mean() + 10.0)
