"""Per-partition window work (streams/windows.py, streams/measures.py): folding samples into a
device's state, a device's energy over a window, closing a window into rack results and the
site partial, pruning. Expectations follow from the toy site's constant powers."""

import math

import pytest

from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.measures import Usage, usage_fields, window_label
from dcpulse.streams.stage import Outputs
from dcpulse.streams.windows import (
    WATER_CP,
    DeviceState,
    EnergyPart,
    Gauges,
    SitePartial,
    close_window,
    device_energy,
    fold,
    prune,
)
from tests.unit.test_stage import MINUTE, SITE, T0, S, ToySite, make_stage

CFG = AnalyticsSettings()


def device(kind: str, hall: str | None = "h1", rack: str | None = None) -> DeviceState:
    return DeviceState(kind, hall, rack, -1, -1)


# ---- fold ------------------------------------------------------------------------------------------

def test_fold_keeps_register_samples_in_time_order_whatever_the_arrival_order() -> None:
    pdu = device("pdu", rack="h1-k1")
    for t, kwh in [(T0 + 20 * S, 3.0), (T0, 1.0), (T0 + 10 * S, 2.0)]:
        fold(pdu, t, {"power_kw": 40.0, "energy_kwh": kwh, "rated_kw": 50.0}, MINUTE)
    assert pdu.registers == {"energy_kwh": [(T0, 1.0), (T0 + 10 * S, 2.0), (T0 + 20 * S, 3.0)]}
    assert pdu.power == {}  # the register is used where there is one
    g = pdu.windows[T0]
    assert (g.sums, g.counts, g.ratings) == ({"kw": 120.0}, {"kw": 3}, {"rated_kw": 50.0})
    assert g.mean("kw") == 40.0 and g.mean("missing") == 0.0


def test_fold_keeps_a_power_gauge_where_a_device_has_no_register() -> None:
    meter = device("facility_meter", hall=None)
    fold(meter, T0, {"power_kw": 120.0}, MINUTE)
    server = device("server", rack="h1-k1")
    fold(server, T0, {"power_w": 5000.0, "cpu_util": 0.5}, MINUTE)
    assert meter.power == {"energy_kwh": [(T0, 120.0)]} and meter.registers == {}
    assert server.power == {"energy_kwh": [(T0, 5.0)]}  # W -> kW


def test_fold_sorts_samples_into_their_windows() -> None:
    pdu = device("pdu")
    fold(pdu, T0 + 59_999, {"power_kw": 1.0}, MINUTE)
    fold(pdu, T0 + MINUTE, {"power_kw": 3.0}, MINUTE)
    assert {start: g.sums["kw"] for start, g in pdu.windows.items()} == {T0: 1.0, T0 + MINUTE: 3.0}


def test_fold_of_a_server_keeps_an_exact_utilisation_histogram_and_power_gauges() -> None:
    server = device("server", rack="h1-k1")
    metrics = {"power_w": 5000.0, "cpu_util": 0.25, "cpu_power_w": 400.0,
               "acc0_util": 0.5, "acc1_util": 0.5004, "acc2_util": 1.0, "acc0_power_w": 600.0,
               "acc1_power_w": 650.0, "acc2_power_w": 700.0, "acc0_temp_c": 60.0}
    fold(server, T0, metrics, MINUTE)
    fold(server, T0 + 10 * S, {**metrics, "cpu_util": 0.75}, MINUTE)
    g = server.windows[T0]
    assert g.util == {500: 4, 1000: 2}  # permille: 0.5004 rounds to 500
    assert (g.sums["cpu_util"], g.counts["cpu_util"]) == (1.0, 2)
    assert g.mean("acc_w") == 1950.0 and g.mean("cpu_w") == 400.0


def test_fold_of_a_cdu_computes_the_heat_it_carries() -> None:
    cdu = device("cdu")
    fold(cdu, T0, {"supply_c": 30.0, "return_c": 40.0, "flow_l_min": 600.0, "capacity_kw": 500.0}, MINUTE)
    g = cdu.windows[T0]
    assert g.sums["heat_kw"] == pytest.approx(600.0 / 60.0 * WATER_CP * 10.0 / 1000.0)  # 418.6 kW
    assert g.ratings == {"capacity_kw": 500.0}
    fold(cdu, T0 + S, {"supply_c": 30.0, "flow_l_min": 600.0}, MINUTE)  # no return temperature: no heat
    assert g.counts["heat_kw"] == 1


# ---- a device's energy over a window ----------------------------------------------------------------

def test_device_energy_from_the_register_interpolated_at_the_boundaries() -> None:
    meter = device("facility_meter", hall=None)
    for i in range(-1, 8):  # a sample every 10 s, from 10 s before the window to 10 s after
        t = T0 + 5 * S + i * 10 * S
        fold(meter, t, {"energy_kwh": 100.0 + 120.0 * (t - T0) / 3_600_000}, MINUTE)
    assert device_energy(meter, "energy_kwh", T0, T0 + MINUTE) == pytest.approx(2.0)  # 120 kW for a minute
    assert device_energy(meter, "energy_kwh", T0 - MINUTE, T0) is None  # not bracketed
    assert device_energy(meter, "volume_l", T0, T0 + MINUTE) is None  # no such register


def test_device_energy_falls_back_to_integrated_power_only_when_it_covers_the_window() -> None:
    meter = device("facility_meter", hall=None)
    for i in range(7):
        fold(meter, T0 + i * 10 * S, {"power_kw": 120.0}, MINUTE)
    assert device_energy(meter, "energy_kwh", T0, T0 + MINUTE) == pytest.approx(2.0)
    assert device_energy(meter, "energy_kwh", T0 + 30 * S, T0 + 90 * S) is None  # half covered


# ---- closing a window ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_window() -> tuple[ToySite, Outputs]:
    """Two minutes of the toy site on one partition; the outputs of every closed window."""
    toy = ToySite()
    stage = make_stage()
    out = Outputs()
    for offset, (_, ts, key, value) in enumerate(toy.records(18, lambda key: 0, 1)):
        stage.handle(out, offset, ts, key, value)
    return toy, out


def test_a_full_windows_partial_holds_every_groups_energy(toy_window) -> None:
    toy, out = toy_window
    partial = next(p for p in out.partials if p.start_ms == T0 + MINUTE)  # samples from T0 + 10 s: the second is whole
    minute = 1 / 60  # h
    expected = {"facility": toy.facility_kw * minute, "water": toy.water_l_min,
                "ups_out/h1": toy.ups_out_kw * minute, "ups_in/h1": toy.ups_in_kw * minute,
                "pdu/h1": toy.racks * toy.pdu_kw * minute, "server/h1": toy.racks * toy.server_w / 1000 * minute,
                "cdu/h1": toy.cdu_kw * minute, "crah/h1": toy.crah_kw * minute}
    assert set(partial.energies) == set(expected)
    for group, kwh in expected.items():
        assert partial.energies[group].kwh == pytest.approx(kwh, rel=1e-9), group
    assert partial.energies["pdu/h1"].present == partial.energies["pdu/h1"].expected == toy.racks
    assert partial.compute_kwh == pytest.approx(toy.racks * (toy.acc_w + toy.cpu_w) / 1000 * minute)
    assert partial.active == 5 + 2 * toy.racks  # every device reported
    assert (partial.site, partial.window_ms, partial.partition, partial.partitions) == (SITE, MINUTE, 0, 1)


def test_a_full_windows_partial_holds_the_halls_usage(toy_window) -> None:
    toy, out = toy_window
    usage = next(p for p in out.partials if p.start_ms == T0 + MINUTE).halls["h1"]
    samples_per_server = MINUTE // toy.dt_ms
    assert usage.util == {round(toy.acc_util * 1000): toy.racks * samples_per_server}
    assert usage.cpu_n == toy.racks * samples_per_server
    assert usage.cpu_sum == pytest.approx(toy.cpu_util * usage.cpu_n)
    assert (usage.power_kw, usage.rated_kw, usage.pdus) == (toy.racks * toy.pdu_kw, toy.racks * toy.rated_kw, toy.racks)
    heat = toy.cdu_flow_l_min / 60 * WATER_CP * toy.cdu_dt_c / 1000
    assert (usage.heat_kw, usage.capacity_kw, usage.cdus) == (pytest.approx(heat), toy.cdu_capacity_kw, 1)


def test_rack_results_are_final_utilisation_points(toy_window) -> None:
    toy, out = toy_window
    racks = [p for p in out.results if p.time.timestamp() * 1000 == T0 + MINUTE]
    assert [p.tags for p in racks] == [{"site": SITE, "level": "rack", "entity": f"h1-k{i}", "window": "1m",
                                        "hall": "h1"} for i in range(1, toy.racks + 1)]
    fields = racks[0].fields
    assert fields["acc_util_mean"] == fields["acc_util_p95"] == fields["acc_util_max"] == toy.acc_util
    assert fields["cpu_util_mean"] == pytest.approx(toy.cpu_util)
    assert (fields["power_kw"], fields["provisioned_kw"]) == (toy.pdu_kw, toy.rated_kw)
    assert fields["power_ratio"] == toy.pdu_kw / toy.rated_kw
    assert fields["acc_samples"] == MINUTE // toy.dt_ms


def test_the_first_window_lacks_energies_whose_boundary_was_not_sampled(toy_window) -> None:
    _, out = toy_window
    first = next(p for p in out.partials if p.start_ms == T0)
    assert first.energies["facility"] == EnergyPart(0.0, 0, 1)  # the meter's first sample is at T0 + 10 s
    assert first.compute_kwh == 0.0  # a server's compute counts only when its energy does


def test_a_partition_without_the_sites_devices_sends_an_empty_partial() -> None:
    points, partial = close_window(SITE, [], T0, 3, 12, CFG)
    assert points == []
    assert partial == SitePartial(SITE, T0, MINUTE, 3, 12)
    assert (partial.active, partial.energies, partial.halls, partial.compute_kwh) == (0, {}, {}, 0.0)


def test_a_device_that_did_not_report_in_the_window_is_expected_but_not_active() -> None:
    quiet = device("pdu", rack="h1-k9")
    quiet.ts_ms = T0 - 1
    fold(quiet, T0 - 1, {"energy_kwh": 5.0}, MINUTE)
    _, partial = close_window(SITE, [("pdu-h1-k9", quiet)], T0, 0, 1, CFG)
    assert partial.active == 0 and partial.energies == {"pdu/h1": EnergyPart(0.0, 0, 1)}


# ---- pruning and state encoding -----------------------------------------------------------------------

def test_prune_keeps_the_last_sample_before_the_end_and_open_windows() -> None:
    pdu = device("pdu")
    for i in range(12):
        fold(pdu, T0 + i * 10 * S, {"energy_kwh": float(i), "power_kw": 1.0}, MINUTE)
    prune(pdu, T0 + MINUTE)
    assert pdu.registers["energy_kwh"] == [(T0 + 50 * S, 5.0)] + [(T0 + i * 10 * S, float(i)) for i in range(6, 12)]
    assert set(pdu.windows) == {T0 + MINUTE}
    # The next window still interpolates its start from the kept sample.
    assert device_energy(pdu, "energy_kwh", T0 + MINUTE, T0 + MINUTE + 50 * S) == pytest.approx(5.0)


def test_device_state_and_gauges_round_trip_through_json() -> None:
    d = device("server", rack="h1-k1")
    fold(d, T0, {"power_w": 5000.0, "energy_kwh": 1.5, "acc0_util": 0.3, "acc0_power_w": 500.0, "cpu_util": 0.1},
         MINUTE)
    d.seq, d.ts_ms = 4, T0
    assert DeviceState.from_json(d.to_json()) == d
    g = d.windows[T0]
    assert Gauges.from_json(g.to_json()) == g


# ---- measures ----------------------------------------------------------------------------------------

def test_usage_fields_p95_is_the_nearest_rank_of_the_histogram() -> None:
    usage = Usage(util={100: 90, 900: 9, 1000: 1})  # 100 samples
    fields = usage_fields(usage)
    assert fields["acc_util_p95"] == 0.9 and fields["acc_util_max"] == 1.0 and fields["acc_samples"] == 100.0
    assert fields["acc_util_mean"] == pytest.approx((0.1 * 90 + 0.9 * 9 + 1.0) / 100)
    assert usage_fields(Usage()) == {}


def test_usage_fields_ratios_need_ratings() -> None:
    assert usage_fields(Usage(power_kw=40.0, pdus=1)) == {"power_kw": 40.0}
    assert usage_fields(Usage(heat_kw=10.0, capacity_kw=20.0, cdus=1)) == {
        "heat_kw": 10.0, "cdu_capacity_kw": 20.0, "heat_ratio": 0.5}


def test_usage_adds_up_and_round_trips() -> None:
    a, b = Usage(util={1: 2}, cpu_sum=0.5, cpu_n=1, pdus=1, power_kw=3.0), Usage(util={1: 1, 7: 1}, cdus=1, heat_kw=2.0)
    a.add(b)
    assert a == Usage(util={1: 3, 7: 1}, cpu_sum=0.5, cpu_n=1, power_kw=3.0, pdus=1, heat_kw=2.0, cdus=1)
    assert Usage.from_json(a.to_json()) == a


@pytest.mark.parametrize("ms, label", [(60_000, "1m"), (900_000, "15m"), (3_600_000, "1h"), (7_200_000, "2h")])
def test_window_labels(ms: int, label: str) -> None:
    assert window_label(ms) == label


def test_every_allowed_window_length_gets_its_own_label() -> None:
    """analytics.window_s may be any length from 10 s: a 30 s window must not be tagged "0m",
    nor a 90 s one "1m" like the minute (their points would be taken for each other's)."""
    lengths = [10_000, 30_000, 60_000, 90_000, 120_000]
    labels = [window_label(ms) for ms in lengths]
    assert len(set(labels)) == len(lengths) and "0m" not in labels, labels


def test_energy_part_json_is_a_triple() -> None:
    assert EnergyPart(1.5, 2, 3).to_json() == [1.5, 2, 3]
    assert math.isclose(EnergyPart().kwh, 0.0)


def test_a_device_state_checkpointed_by_the_previous_release_still_loads() -> None:
    from dcpulse.streams.windows import DeviceState

    old = ["server", "h1", "h1-k1", 7, 1_000, {"energy_kwh": [[900, 1.5]]}, {}, []]  # 8 fields, before alerts
    state = DeviceState.from_json(old)
    assert (state.seq, state.ts_ms, state.registers, state.supply) == (7, 1_000, {"energy_kwh": [(900, 1.5)]},
                                                                        (None, None, None))
    assert DeviceState.from_json(state.to_json()) == state
