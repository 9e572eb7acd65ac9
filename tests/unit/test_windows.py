"""The window engine on simulated data, without Kafka: determinism under any interleaving of
partitions, agreement with the simulator's ground truth, lateness, roll-ups."""

import zlib
from datetime import UTC, datetime, timedelta

import pytest

from dcpulse.contract import DeviceKind, Telemetry
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.streams.offline import reference_results
from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.windows import WindowEngine

START = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


def simulate(presets: list[str], seconds: float, faults: list[str] | None = None):
    """(simulator, [(raw partition as Kafka would pick it by key, Kafka timestamp ms, key, value)])."""
    sim = ScenarioSimulator(build_scenario(presets, None, faults or [], 7, START))
    records: list[tuple[int, int, bytes, bytes]] = []
    run_scenario(sim, seconds, None,
                 lambda key, value, ts_ms: records.append((zlib.crc32(key) % 6, ts_ms, key, value)))
    return sim, records


@pytest.fixture(scope="module")
def two_sites():
    sim, records = simulate(["small", "pengcheng"], 20 * 60)
    return sim, records, reference_results(records)


def test_any_interleaving_of_sources_gives_identical_results(two_sites) -> None:
    _, records, in_publish_order = two_sites
    one_source_after_the_other = reference_results(sorted(records, key=lambda r: r[0]))  # stable sort
    assert in_publish_order == one_source_after_the_other
    assert len(in_publish_order) > 100


def test_windowed_pue_agrees_with_the_simulators_ground_truth(two_sites) -> None:
    sim, _, results = two_sites
    results = results.values()
    for site in sim.sites:
        minutes = [p for p in results if p.measurement == "pue" and p.tags["site"] == site.site.name
                   and p.tags["category"] == "1" and p.tags["window"] == "1m" and p.fields["quality"] == "complete"]
        assert len(minutes) >= 15
        windowed = sum(p.fields["facility_kwh"] for p in minutes) / sum(p.fields["it_kwh"] for p in minutes)
        assert windowed == pytest.approx(site.truth.pue, rel=0.01)
        # IT at the UPS output > at PDU outputs > at server inputs, so PUE rises with the category.
        by_cat = {c: [p for p in results if p.measurement == "pue" and p.tags["site"] == site.site.name
                      and p.tags["category"] == c and p.tags["window"] == "1m"] for c in "123"}
        assert by_cat["1"][3].fields["pue"] < by_cat["2"][3].fields["pue"] < by_cat["3"][3].fields["pue"]


def test_first_window_is_flagged_not_complete(two_sites) -> None:
    first = min((p for p in two_sites[2].values() if p.measurement == "pue"), key=lambda p: p.time)
    assert first.fields["quality"] != "complete"  # meters started mid-window: no bracketing sample


def test_quarter_hour_rollup_is_sum_over_sum_of_its_minutes(two_sites) -> None:
    results = two_sites[2].values()
    quarter = [p for p in results if p.measurement == "pue" and p.tags == {"site": "small", "category": "2", "window": "15m"}]
    assert len(quarter) == 1
    q = quarter[0]
    minutes = [p for p in results if p.measurement == "pue" and p.tags == {"site": "small", "category": "2", "window": "1m"}
               and q.time <= p.time < q.time + timedelta(minutes=15)]
    assert q.fields["facility_kwh"] == pytest.approx(sum(m.fields["facility_kwh"] for m in minutes))
    assert q.fields["pue"] == pytest.approx(sum(m.fields["facility_kwh"] for m in minutes)
                                            / sum(m.fields["it_kwh"] for m in minutes))


def test_utilisation_efficiency_and_ppue_are_produced(two_sites) -> None:
    results = list(two_sites[2].values())
    racks = [p for p in results if p.measurement == "utilisation" and p.tags["level"] == "rack"
             and p.tags["site"] == "small"]
    assert {p.tags["entity"] for p in racks} == {"h1-r01-k01", "h1-r01-k02", "h1-r02-k01", "h1-r02-k02"}
    for p in racks:
        assert 0 <= p.fields["acc_util_mean"] <= p.fields["acc_util_p95"] <= p.fields["acc_util_max"] <= 1
        assert 0 < p.fields["power_ratio"] < 1.5 and p.fields["provisioned_kw"] == 50.0
    hall = [p for p in results if p.measurement == "utilisation" and p.tags["level"] == "hall"
            and p.tags["site"] == "small"][3]
    assert 0 < hall.fields["heat_ratio"] < 1
    eff = [p for p in results if p.measurement == "site_efficiency" and p.tags["site"] == "small"][3]
    assert eff.fields["wue_l_per_kwh"] > 0 and eff.fields["itue"] > 1 and eff.fields["tue"] > eff.fields["itue"]
    ppue = [p for p in results if p.measurement == "ppue" and p.tags["site"] == "small"][3]
    assert 1.0 < ppue.fields["ppue"] < 1.2


def _sample(ts: datetime, energy: float, device: str = "m1") -> Telemetry:
    return Telemetry(site="s", device=device, kind=DeviceKind.FACILITY_METER, seq=0, ts=ts,
                     metrics={"energy_kwh": energy, "power_kw": 60.0})


def test_late_records_are_counted_and_left_out() -> None:
    engine = WindowEngine(AnalyticsSettings(allowed_lateness_s=30), {})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(12):
        engine.process("p0", _sample(t0 + timedelta(seconds=10 * i), float(i)))
    assert engine.late == 0
    engine.process("p0", _sample(t0 + timedelta(seconds=20), 99.0, device="m2"))  # 90 s behind its source
    assert engine.late == 1


def test_windows_close_on_event_time_only() -> None:
    engine = WindowEngine(AnalyticsSettings(allowed_lateness_s=30), {})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    closed = []
    for i in range(10):  # 0..90 s of data: the first window [0, 60) closes once 90 s is seen
        closed.extend(engine.process("p0", _sample(t0 + timedelta(seconds=10 * i), float(i))))
    assert [p.time for p in closed if p.measurement == "pue"] == []  # no IT meter: no PUE point
    store = engine.store
    assert store["s|wm"]["closed"] == t0.timestamp() + 60


def test_a_redelivered_sample_is_not_counted_twice() -> None:
    engine = WindowEngine(AnalyticsSettings(allowed_lateness_s=30), {})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    samples = [_sample(t0 + timedelta(seconds=10 * i), float(i)) for i in range(5)]
    for sample in samples + samples[2:4]:  # a restart rewinds two samples
        engine.process("p0", sample)
    assert engine.redelivered == 2 and engine.late == 0
    assert len(engine.store["s|d|m1"]["reg"]["energy_kwh"]) == 5


def test_a_meter_without_register_falls_back_to_integrated_power() -> None:
    """Facility meter with a power gauge only (120 kW), UPS output with a register (100 kW):
    category 1 PUE = 120 / 100, the facility energy integrated from the gauge."""
    engine = WindowEngine(AnalyticsSettings(allowed_lateness_s=30), {})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = []
    for i in range(16):  # 0..150 s: [0, 60) and [60, 120) close
        ts = t0 + timedelta(seconds=10 * i)
        points += engine.process("p0", Telemetry(site="s", device="fm", kind=DeviceKind.FACILITY_METER, seq=i,
                                                 ts=ts, metrics={"power_kw": 120.0}))
        points += engine.process("p0", Telemetry(site="s", device="ups-1", kind=DeviceKind.UPS, seq=i, ts=ts,
                                                 metrics={"output_energy_kwh": 100.0 * 10 * i / 3600,
                                                          "output_power_kw": 100.0}))
    minutes = [p for p in points if p.measurement == "pue" and p.tags == {"site": "s", "category": "1", "window": "1m"}]
    assert len(minutes) == 2
    for p in minutes:
        assert p.fields["facility_kwh"] == pytest.approx(2.0, rel=1e-12)  # 120 kW for 60 s
        assert p.fields["it_kwh"] == pytest.approx(100.0 / 60, rel=1e-12)
        assert p.fields["pue"] == pytest.approx(1.2, rel=1e-12) and p.fields["coverage"] == 1.0
    assert "pow" not in engine.store["s|d|ups-1"]  # the register is used where there is one
