"""`dcpulse query` on a simulated site: each canned question's answer equals the same question
asked in Flux directly (written plainly here, not with the command's builders), and questions
that cannot be answered exit with code 1 and one line."""

from __future__ import annotations

import math
import socket
from collections import defaultdict
from datetime import datetime, timedelta

import orjson
import pytest

from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.simulated_site import (
    HOT_RACK,
    MINUTES,
    SimulatedSite,
    dcpulse,
    energy_by_role,
    fails,
    simulated_site,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(services: LocalServices, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    with simulated_site(services, settings, tmp_path_factory.mktemp("query")) as simulated:
        yield simulated


def ask(site: SimulatedSite, question: str, *options: str) -> list[dict]:
    done = dcpulse("query", question, *site.range_args(), *options, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)
    for row in rows:
        for key in ("time", "peak_time", "last_above"):
            if key in row:
                row[key] = datetime.fromisoformat(row[key])
    return rows


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)  # sums in another order


def analytics(site: SimulatedSite, condition: str, pivot: bool = True) -> list[dict]:
    query = site.where(site.settings.influx.buckets.analytics, condition)
    if pivot:
        query += ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    return site.flux(query)


def test_pue(site: SimulatedSite) -> None:
    got = ask(site, "pue", "--window", "1m")
    stored = analytics(site, 'r._measurement == "pue" and r.site == "small" and r.window == "1m"')
    assert len(stored) >= 3 * (MINUTES - 3)
    assert sorted((r["time"], r["category"], r["pue"], r["facility_kwh"], r["it_kwh"], r["coverage"], r["quality"])
                  for r in got) == \
        sorted((r["_time"], r["category"], r.get("pue"), r["facility_kwh"], r["it_kwh"], r["coverage"], r["quality"])
               for r in stored)


def test_energy(site: SimulatedSite) -> None:
    got = {r["part"]: r for r in ask(site, "energy")}
    direct = energy_by_role(site)
    assert close(got["facility"]["kwh"], direct["facility"])
    assert close(got["it"]["kwh"], direct["it"])
    assert close(got["distribution_losses"]["kwh"], direct["ups_input"] - direct["it"])
    assert close(got["cooling"]["kwh"], direct["cooling"])
    assert close(got["other"]["kwh"], direct["facility"] - direct["ups_input"] - direct["cooling"])
    assert got["distribution_losses"]["kwh"] > 0 and got["cooling"]["kwh"] > 0
    # The split agrees with the stored windows: facility over IT is category-2 PUE.
    windows = analytics(site, 'r._measurement == "pue" and r.site == "small" and r.window == "1m" '
                              'and r.category == "2"')
    stored_pue = sum(r["facility_kwh"] for r in windows) / sum(r["it_kwh"] for r in windows)
    assert abs(got["facility"]["kwh"] / got["it"]["kwh"] - stored_pue) < 0.01


@pytest.mark.parametrize("sensor, field", [("inlet", 'r._field == "inlet_c"'),
                                           ("accelerator", "r._field =~ /^acc[0-9]+_temp_c$/")])
def test_hottest_racks(site: SimulatedSite, sensor: str, field: str) -> None:
    got = ask(site, "hottest-racks", "--by", sensor, "--top", "3")
    peak: dict[str, float] = defaultdict(lambda: -math.inf)
    for r in site.flux(site.where(site.settings.influx.buckets.raw,
                                  f'r._measurement == "server" and r.site == "small" and {field}')):
        peak[r["rack"]] = max(peak[r["rack"]], r["_value"])
    assert [r["max_c"] for r in got] == sorted(peak.values(), reverse=True)[:3]
    assert all(peak[r["rack"]] == r["max_c"] for r in got)
    if sensor == "inlet":
        assert got[0]["rack"] == HOT_RACK and got[0]["max_c"] > got[1]["max_c"] + 5  # the hot spot: +10 K


@pytest.mark.parametrize("level", ["rack", "hall"])
def test_utilisation(site: SimulatedSite, level: str) -> None:
    got = {r["entity"]: r for r in ask(site, "utilisation", "--level", level)}
    series = (f'r._measurement == "utilisation" and r.site == "small" and r.window == "1m" '
              f'and r.level == "{level}"')

    def per_entity(field: str, aggregate: str) -> dict[str, float]:
        rows = site.flux(site.where(site.settings.influx.buckets.analytics, f'{series} and r._field == "{field}"')
                         + f' |> group(columns: ["entity"]) |> {aggregate}')
        return {r["entity"]: r["_value"] for r in rows}

    p50 = per_entity("acc_util_mean", 'quantile(q: 0.5, method: "exact_selector")')
    p95 = per_entity("acc_util_mean", 'quantile(q: 0.95, method: "exact_selector")')
    peak = per_entity("acc_util_max", "max()")
    cpu = per_entity("cpu_util_mean", "mean()")
    weighted = {r["entity"]: r["w"] / r["n"] for r in site.flux(
        site.where(site.settings.influx.buckets.analytics, series)
        + ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
          ' |> filter(fn: (r) => exists r.acc_util_mean)'
          ' |> map(fn: (r) => ({entity: r.entity, w: r.acc_util_mean * r.acc_samples, n: r.acc_samples}))'
          ' |> group(columns: ["entity"])'
          ' |> reduce(identity: {w: 0.0, n: 0.0},'
          '           fn: (r, accumulator) => ({w: accumulator.w + r.w, n: accumulator.n + r.n}))')}
    assert set(got) == set(p50) and len(got) == (4 if level == "rack" else 1)
    for entity, row in got.items():
        assert row["acc_util_p50"] == p50[entity] and row["acc_util_p95"] == p95[entity]
        assert row["acc_util_max"] == peak[entity]
        assert close(row["acc_util_mean"], weighted[entity]) and close(row["cpu_util_mean"], cpu[entity])


def test_near_provisioned(site: SimulatedSite) -> None:
    ratios = analytics(site, 'r._measurement == "utilisation" and r.site == "small" and r.level == "rack" '
                             'and r.window == "1m" and r._field == "power_ratio"', pivot=False)
    peaks = sorted({r["_value"] for r in ratios})
    above = (peaks[len(peaks) // 2] + peaks[len(peaks) // 2 - 1]) / 2  # some minutes above, some not
    got = {r["rack"]: r for r in ask(site, "near-provisioned", "--above", repr(above))}
    over = [r for r in ratios if r["_value"] > above]
    expected: dict[str, list[float]] = defaultdict(list)
    for r in over:
        expected[r["entity"]].append(r["_value"])
    assert got and set(got) == set(expected)
    for rack, values in expected.items():
        assert got[rack]["minutes_above"] == len(values) and got[rack]["peak_ratio"] == max(values)
    assert ask(site, "near-provisioned") == [] and max(peaks) < 0.9  # the small site's racks stay well below


def test_coolant(site: SimulatedSite) -> None:
    got = ask(site, "coolant", "--cdu", "cdu-h1-01", "--every", "1m")
    samples = site.flux(site.where(site.settings.influx.buckets.raw,
                                   'r._measurement == "cdu" and r.device == "cdu-h1-01" and '
                                   '(r._field == "supply_c" or r._field == "return_c" or r._field == "flow_l_min")'))
    minutes: dict[tuple[datetime, str], list[float]] = defaultdict(list)
    for r in samples:
        minutes[(r["_time"].replace(second=0, microsecond=0), r["_field"])].append(r["_value"])
    assert len(got) >= MINUTES
    for row in got:
        for field in ("supply_c", "return_c", "flow_l_min"):
            values = minutes[(row["time"], field)]
            assert close(row[field], sum(values) / len(values)), (row["time"], field)
    every = ask(site, "coolant", "--cdu", "cdu-h1-01", "--every", "0")
    assert len(every) == len(samples) // 3
    # The pump failure shows: flow drops while it lasts.
    assert min(r["flow_l_min"] for r in got) < 0.8 * max(r["flow_l_min"] for r in got)


def test_alerts(site: SimulatedSite) -> None:
    got = ask(site, "alerts")
    log = site.flux(site.where(site.settings.influx.buckets.alerts,
                               'r._measurement == "alert" and r.site == "small" and r._field == "state"'))
    assert sorted((r["time"], r["fingerprint"], r["state"]) for r in got) == \
        sorted((r["_time"], r["fingerprint"], r["_value"]) for r in log)
    assert any(r["alertname"] == "rack_inlet_above_allowable" and f"/{HOT_RACK}/" in r["where"]
               and r["state"] == "firing" for r in got)
    assert any(r["suppressed"] for r in got), "the pump failure suppresses its racks' accelerator alerts"


def test_flux_pass_through(site: SimulatedSite) -> None:
    condition = 'r._measurement == "pue" and r.window == "1m" and r.category == "1" and r._field == "pue"'
    query = site.where(site.settings.influx.buckets.analytics, condition)
    done = dcpulse("query", "flux", query, "--format", "json")
    assert done.returncode == 0, done.stderr
    got = orjson.loads(done.stdout)
    assert [(r["_time"], r["_value"]) for r in got] == \
        [(r["_time"].isoformat().replace("+00:00", "Z"), r["_value"]) for r in site.flux(query)]
    assert len(got) >= MINUTES - 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_questions_that_cannot_be_answered(site: SimulatedSite) -> None:
    start, stop = site.span.start.isoformat(), site.span.stop.isoformat()
    days_ago = (site.span.start - timedelta(days=2)).isoformat()
    assert "unknown site 'nowhere'" in fails("query", "pue", "--site", "nowhere", "--since", start, "--until", stop)
    assert "small" in fails("query", "energy", "--site", "nowhere", "--since", start, "--until", stop)
    assert "an empty range" in fails("query", "pue", "--site", "small", "--since", days_ago, "--until",
                                     (site.span.start - timedelta(days=1)).isoformat())
    assert "is not before --until" in fails("query", "pue", "--site", "small", "--since", stop, "--until", start)
    assert "no CDU 'cdu-h9-01'" in fails("query", "coolant", *site.range_args(), "--cdu", "cdu-h9-01")
    assert "cdu-h1-01, cdu-h1-02" in fails("query", "coolant", *site.range_args(), "--cdu", "nope")
    port = free_port()
    down = fails("query", "hottest-racks", *site.range_args(), env={"DCPULSE_INFLUX__PORT": str(port)})
    assert f"InfluxDB at http://127.0.0.1:{port} is not reachable: connection refused" in down
    assert "answered" in fails("query", "flux", "this is not flux")
