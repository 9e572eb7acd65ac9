"""`dcpulse report` on a simulated site: each figure is drawn from the stored data (read back
from the matplotlib artists and compared with Flux asked directly), and the HTML file is
self-contained: one inline image per figure, no http(s) URL."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from matplotlib.axes import Axes

from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.views import charts
from dcpulse.views.queries import Source
from dcpulse.views.report import Report, write_report
from tests.integration.simulated_site import (
    HOT_RACK,
    SimulatedSite,
    dcpulse,
    energy_by_role,
    fails,
    simulated_site,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(services: LocalServices, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    with simulated_site(services, settings, tmp_path_factory.mktemp("report-site")) as simulated:
        yield simulated


@pytest.fixture(scope="module")
def report(site: SimulatedSite, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return write_report(Source.from_settings(site.settings), "small", site.span, tmp_path_factory.mktemp("report"))


def axes(report: Report, slug: str) -> Axes:
    return next(c for c in report.charts if c.slug == slug).figure.axes[0]


def stored(site: SimulatedSite, condition: str, bucket: str | None = None) -> list[dict]:
    return site.flux(site.where(bucket or site.settings.influx.buckets.analytics, condition)
                     + ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')


def points(line) -> list[tuple]:
    return list(zip(line.get_xdata(), line.get_ydata(), strict=True))


def test_the_pue_lines_are_the_stored_windows_against_the_target(site: SimulatedSite, report: Report) -> None:
    windows = stored(site, 'r._measurement == "pue" and r.site == "small" and r.window == "1m"')
    lines = {line.get_label(): line for line in axes(report, "pue").get_lines()}
    for category, label in charts.CATEGORIES.items():
        expected = sorted((r["_time"], r["pue"]) for r in windows if r["category"] == category and r["pue"] is not None)
        assert len(expected) >= 7 and points(lines[label]) == expected
    assert list(lines["target 1.25"].get_ydata()) == [1.25, 1.25]  # the small preset's target


def test_the_ppue_lines_are_the_stored_windows(site: SimulatedSite, report: Report) -> None:
    windows = stored(site, 'r._measurement == "ppue" and r.site == "small" and r.window == "1m"')
    [line] = axes(report, "ppue").get_lines()
    assert line.get_label() == "hall h1" and points(line) == sorted(
        (r["_time"], r["ppue"]) for r in windows if r["ppue"] is not None)


def test_the_energy_bars_are_the_register_increases(site: SimulatedSite, report: Report) -> None:
    direct = energy_by_role(site)
    expected = [direct["it"], direct["ups_input"] - direct["it"], direct["cooling"],
                direct["facility"] - direct["ups_input"] - direct["cooling"]]
    bars = axes(report, "energy").containers[0]
    assert all(math.isclose(bar.get_width(), kwh, rel_tol=1e-9) for bar, kwh in zip(bars, expected, strict=True))


def test_the_heat_map_cells_are_the_stored_rack_minutes(site: SimulatedSite, report: Report) -> None:
    windows = stored(site, 'r._measurement == "utilisation" and r.site == "small" and r.level == "rack" '
                           'and r.window == "1m"')
    ax = axes(report, "utilisation")
    racks = [label.get_text() for label in ax.get_yticklabels()]
    assert racks == sorted({r["entity"] for r in windows})
    grid = ax.images[0].get_array()
    first = min(r["_time"] for r in windows)
    for r in windows:
        assert grid[racks.index(r["entity"])][(r["_time"] - first) // timedelta(minutes=1)] == r["acc_util_mean"] * 100
    assert grid.count() == len(windows)  # no other cell is filled


def test_the_power_bars_are_each_racks_mean_and_peak(site: SimulatedSite, report: Report) -> None:
    windows = stored(site, 'r._measurement == "utilisation" and r.site == "small" and r.level == "rack" '
                           'and r.window == "1m"')
    power: dict[str, list[float]] = defaultdict(list)
    for r in windows:
        power[r["entity"]].append(r["power_kw"])
    ax = axes(report, "power")
    racks = [label.get_text() for label in ax.get_xticklabels()]
    mean, peak = ax.containers
    for rack, mean_bar, peak_bar in zip(racks, mean, peak, strict=True):
        assert math.isclose(mean_bar.get_height(), sum(power[rack]) / len(power[rack]), rel_tol=1e-12)
        assert peak_bar.get_height() == max(power[rack])
    assert [y for _, y in ax.collections[0].get_offsets()] == [50.0] * len(racks)  # provisioned


def test_the_coolant_lines_are_the_minute_means_of_the_samples(site: SimulatedSite, report: Report) -> None:
    samples = site.flux(site.where(site.settings.influx.buckets.raw,
                                   'r._measurement == "cdu" and (r._field == "supply_c" or r._field == "return_c")'))
    minutes: dict[tuple[str, str, datetime], list[float]] = defaultdict(list)
    for r in samples:
        minutes[(r["device"], r["_field"], r["_time"].replace(second=0, microsecond=0))].append(r["_value"])
    lines = {line.get_label(): line for line in axes(report, "coolant").get_lines()}
    assert set(lines) == {f"cdu-h1-0{i} {end}" for i in (1, 2) for end in ("supply", "return")}
    for label, line in lines.items():
        cdu, end = label.split()
        for t, y in points(line):
            values = minutes[(cdu, f"{end}_c", t)]
            assert math.isclose(y, sum(values) / len(values), rel_tol=1e-12)


def test_the_alert_timeline_has_a_bar_per_firing_stretch(site: SimulatedSite, report: Report) -> None:
    log = stored(site, 'r._measurement == "alert" and r.site == "small"', site.settings.influx.buckets.alerts)
    states: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for r in log:
        states[r["fingerprint"]].append((r["_time"], r["state"]))
    firing = ("firing", "keep_firing")
    starts = sum(1 for seq in states.values() for i, (_, state) in enumerate(sorted(seq))
                 if state in firing and (i == 0 or sorted(seq)[i - 1][1] not in firing))
    ax = axes(report, "alerts")
    assert starts > 0 and len(ax.collections) == starts
    assert any(label.get_text().startswith(f"rack_inlet_above_allowable h1/{HOT_RACK}/")
               for label in ax.get_yticklabels())


def test_the_page_is_self_contained(report: Report) -> None:
    page = report.html.read_text()
    assert page.count("<img ") == len(report.charts) == 7
    assert page.count('src="data:image/png;base64,') == 7
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert "Site PUE target: 1.25." in page
    assert [p.name for p in report.pngs] == [f"{i}-{c.slug}.png" for i, c in enumerate(report.charts, start=1)]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.parent == report.html.parent for p in report.pngs)


def test_the_command_says_where_it_wrote(site: SimulatedSite, tmp_path: Path) -> None:
    done = dcpulse("report", *site.range_args(), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'out' / 'report.html'}" in done.stdout
    assert (tmp_path / "out" / "report.html").exists() and len(list((tmp_path / "out").glob("*.png"))) == 7
    assert "unknown site 'nowhere'" in fails("report", "--site", "nowhere", "--since", site.span.start.isoformat(),
                                             "--until", site.span.stop.isoformat(), "--output", str(tmp_path / "x"))
