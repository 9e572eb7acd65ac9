"""The pure parts of `dcpulse query` and `dcpulse report`: ranges, Flux builders, the
aggregations done after reading, output formats, figures and the HTML page."""

from __future__ import annotations

import csv
import io
import math
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from rich.console import Console

from dcpulse.settings import BucketSettings
from dcpulse.views import charts
from dcpulse.views.queries import (
    QueryError,
    Source,
    Span,
    above_provisioned,
    alert_rows,
    coolant_query,
    energy_query,
    energy_split,
    hottest_racks_query,
    nearest_rank,
    parse_span,
    pick_window,
    sites_query,
    utilisation_percentiles,
    window_query,
)
from dcpulse.views.query_cli import render_csv, render_json, render_table, table_cell
from dcpulse.views.report import Chart, render_html

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SPAN = Span(datetime(2026, 7, 1, 10, 0, tzinfo=UTC), datetime(2026, 7, 1, 11, 0, tzinfo=UTC))


def minute(n: int) -> datetime:
    return SPAN.start + timedelta(minutes=n)


# ---- ranges -------------------------------------------------------------------------------------


def test_a_span_takes_durations_times_and_now() -> None:
    assert parse_span("24h", "now", NOW) == Span(NOW - timedelta(hours=24), NOW)
    assert parse_span("2026-07-01T10:00:00Z", "90m", NOW) == Span(datetime(2026, 7, 1, 10, tzinfo=UTC),
                                                                  datetime(2026, 7, 1, 10, 30, tzinfo=UTC))
    # No zone is UTC; another zone is converted.
    assert parse_span("2026-07-01T10:00:00", "2026-07-01T12:30:00+02:00", NOW).stop == datetime(2026, 7, 1, 10, 30,
                                                                                                 tzinfo=UTC)


def test_a_span_ends_at_now_at_the_latest() -> None:
    assert parse_span("1h", "2030-01-01T00:00:00Z", NOW).stop == NOW


@pytest.mark.parametrize("since, until, message", [
    ("1h", "2h", "--since (2026-07-01 11:00:00) is not before --until (2026-07-01 10:00:00"),
    ("2030-01-01T00:00:00Z", "now", "is not before --until"),
    ("yesterday", "now", "--since 'yesterday' is neither a duration"),
    ("1h", "soon", "--until 'soon' is neither a duration"),
])
def test_a_bad_span_says_what_is_wrong(since: str, until: str, message: str) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        parse_span(since, until, NOW)


# ---- Flux builders ------------------------------------------------------------------------------


def test_window_query_reads_one_window_length_up_to_the_stop() -> None:
    query = window_query("analytics", "pue", 'a"b', SPAN, "15m")
    assert 'r._measurement == "pue" and r.site == "a\\"b"' in query
    assert "range(start: 2026-07-01T10:00:00.000000Z)" in query
    assert 'filter(fn: (r) => r._time < 2026-07-01T11:00:00.000000Z and r.window == "15m")' in query
    assert "r.window" not in window_query("analytics", "pue", "s", SPAN, None)
    assert 'and r.level == "rack")' in window_query("analytics", "utilisation", "s", SPAN, "1m", 'r.level == "rack"')


def test_energy_query_sums_each_kinds_register_increases() -> None:
    query = energy_query("raw", "small", SPAN)
    assert "range(start: 2026-07-01T10:00:00.000000Z, stop: 2026-07-01T11:00:00.000000Z)" in query
    for name in ("facility_meter", "ups", "pdu", "cdu", "crah", "chiller", "cooling_tower", "dry_cooler", "pump"):
        assert f'r._measurement == "{name}"' in query
    assert 'r._field == "input_energy_kwh"' in query and 'r._field == "energy_kwh"' in query
    assert "server" not in query  # server inputs are inside the PDU outputs
    assert query.index("increase()") < query.index("last()") < query.index("sum()")


def test_hottest_racks_query_ranks_racks_by_their_hottest_reading() -> None:
    inlet = hottest_racks_query("raw", "small", SPAN, "inlet", 3)
    assert 'r._field == "inlet_c"' in inlet and "limit(n: 3)" in inlet
    assert inlet.index('group(columns: ["rack"])') < inlet.index("max()") < inlet.index("sort(")
    assert "r._field =~ /^acc[0-9]+_temp_c$/" in hottest_racks_query("raw", "small", SPAN, "accelerator", 3)


def test_coolant_query_averages_aligned_buckets_or_reads_every_sample() -> None:
    query = coolant_query("raw", "small", SPAN, 60, 'cdu"x')
    assert 'r.device == "cdu\\"x"' in query
    assert 'aggregateWindow(every: 60s, fn: mean, createEmpty: false, timeSrc: "_start")' in query
    assert "aggregateWindow" not in coolant_query("raw", "small", SPAN, 0, "cdu-h1-01")
    assert "r.device" not in coolant_query("raw", "small", SPAN, 60)


def test_sites_query_lists_the_site_tag_of_the_range() -> None:
    query = sites_query('b"', SPAN)
    assert query.startswith('import "influxdata/influxdb/schema"\n')
    assert 'schema.tagValues(bucket: "b\\"", tag: "site", start: 2026-07-01T10:00:00.000000Z' in query


# ---- what is computed after reading -------------------------------------------------------------


def test_the_energy_split_adds_up_to_the_facility() -> None:
    rows = energy_split({"facility": 130.0, "ups_input": 106.0, "it": 100.0, "cooling": 22.0})
    parts = {r["part"]: r for r in rows}
    assert parts["it"]["kwh"] == 100.0 and parts["distribution_losses"]["kwh"] == 6.0
    assert parts["cooling"]["kwh"] == 22.0 and parts["other"]["kwh"] == 2.0
    assert math.isclose(sum(r["kwh"] for r in rows if r["part"] != "facility"), parts["facility"]["kwh"])
    assert parts["facility"]["share"] == 1.0 and parts["it"]["share"] == 100 / 130


def test_the_energy_split_names_the_registers_it_misses() -> None:
    with pytest.raises(QueryError, match="ups_input"):
        energy_split({"facility": 1.0, "it": 1.0, "cooling": 0.1})


@pytest.mark.parametrize("q, expected", [(0.5, 3.0), (0.95, 5.0), (0.2, 1.0), (0.0, 1.0), (1.0, 5.0)])
def test_nearest_rank(q: float, expected: float) -> None:
    assert nearest_rank([5.0, 1.0, 4.0, 2.0, 3.0], q) == expected


def test_utilisation_percentiles_weigh_the_mean_by_samples() -> None:
    windows = [
        {"time": minute(0), "entity": "r1", "hall": "h1", "acc_util_mean": 0.2, "acc_util_max": 0.5,
         "acc_samples": 10.0, "cpu_util_mean": 0.1},
        {"time": minute(1), "entity": "r1", "hall": "h1", "acc_util_mean": 0.8, "acc_util_max": 0.9,
         "acc_samples": 30.0, "cpu_util_mean": 0.3},
        {"time": minute(0), "entity": "r2", "hall": "h1", "power_kw": 3.0},  # no accelerator samples
    ]
    [row] = utilisation_percentiles(windows)
    assert row["entity"] == "r1" and row["minutes"] == 2
    assert math.isclose(row["acc_util_mean"], (0.2 * 10 + 0.8 * 30) / 40)
    assert row["acc_util_p50"] == 0.2 and row["acc_util_p95"] == 0.8 and row["acc_util_max"] == 0.9
    assert math.isclose(row["cpu_util_mean"], 0.2)


def test_near_provisioned_keeps_racks_that_went_above_with_their_peak() -> None:
    def window(n: int, rack: str, ratio: float) -> dict:
        return {"time": minute(n), "entity": rack, "hall": "h1", "power_kw": ratio * 50, "provisioned_kw": 50.0,
                "power_ratio": ratio}

    rows = above_provisioned([window(0, "a", 0.95), window(1, "a", 0.92), window(2, "a", 0.5),
                              window(0, "b", 0.97), window(0, "c", 0.9)], 0.9)
    assert [r["rack"] for r in rows] == ["b", "a"]  # "c" is at 0.9, not above
    a = rows[1]
    assert (a["minutes_above"], a["minutes"], a["peak_ratio"], a["peak_time"], a["last_above"]) == \
        (2, 3, 0.95, minute(0), minute(1))
    assert a["peak_kw"] == 0.95 * 50 and a["provisioned_kw"] == 50.0


def test_alert_rows_stop_at_the_end_of_the_range() -> None:
    log = [{"_time": minute(n), "alertname": "Leak", "severity": "critical", "rack": "r1", "state": state,
            "old": old, "value": 1.0, "inhibited_by": by, "flapping": False, "fingerprint": "f"}
           for n, state, old, by in ((1, "firing", "inactive", ""), (2, "inactive", "firing", "g"))]
    rows = alert_rows(log, Span(SPAN.start, minute(2)))
    assert [(r["time"], r["where"], r["state"], r["suppressed"]) for r in rows] == [(minute(1), "r1", "firing", False)]
    assert alert_rows(log, SPAN)[1]["suppressed"] is True


def test_pick_window_prefers_the_coarsest_with_enough_points() -> None:
    rows = [{"window": "1m"}] * 100 + [{"window": "15m"}] * 12 + [{"window": "1h"}] * 3
    assert pick_window(rows) == "15m"
    assert pick_window([{"window": "1m"}] * 5 + [{"window": "15m"}]) == "1m"
    assert pick_window([]) is None


def test_an_unreachable_influxdb_is_named_in_one_line() -> None:
    source = Source("http://127.0.0.1:1", "token", "org", BucketSettings())
    with pytest.raises(QueryError, match=r"^InfluxDB at http://127\.0\.0\.1:1 is not reachable: connection refused"):
        source.rows("buckets()")


# ---- output formats -----------------------------------------------------------------------------

ROWS = [{"time": minute(0), "rack": "[bold]r1[/bold]", "max_c": 41.25, "ok": True, "note": None},
        {"time": minute(1), "rack": "r2", "max_c": 1234.5, "ok": False, "extra": "x"}]


def test_csv_has_every_column_and_iso_times() -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(ROWS))))
    assert list(rows[0]) == ["time", "rack", "max_c", "ok", "note", "extra"]
    assert rows[0]["time"] == "2026-07-01T10:00:00+00:00" and rows[0]["max_c"] == "41.25" and rows[0]["note"] == ""


def test_json_is_an_array_of_rows_with_utc_times() -> None:
    decoded = orjson.loads(render_json(ROWS))
    assert decoded[0] == {"time": "2026-07-01T10:00:00Z", "rack": "[bold]r1[/bold]", "max_c": 41.25, "ok": True,
                          "note": None}


def test_the_table_prints_markup_in_names_as_text() -> None:
    out = Console(width=200, record=True, color_system=None)
    out.print(render_table(ROWS, "title [red]x[/red]"))
    text = out.export_text()
    assert "[bold]r1[/bold]" in text and "title [red]x[/red]" in text
    narrow = render_table(ROWS, "t", hide=("note", "extra"))
    assert [c.header for c in narrow.columns] == ["time", "rack", "max_c", "ok"]
    assert table_cell(1234.5) == "1,234" and table_cell(41.25) == "41.250" and table_cell(None) == "-"
    assert table_cell(minute(0)) == "2026-07-01 10:00:00"


# ---- figures and the page -----------------------------------------------------------------------


def test_the_pue_chart_draws_each_category_and_the_target() -> None:
    rows = [{"time": minute(n), "window": "1m", "category": c, "pue": 1.1 + n / 100 + int(c) / 10}
            for n in range(3) for c in "123"] + [{"time": minute(0), "window": "15m", "category": "1", "pue": 9.0}]
    lines = charts.pue_chart(rows, "1m", 1.25).axes[0].get_lines()
    by_label = {line.get_label(): line for line in lines}
    assert list(by_label["category 2: IT at PDU outputs"].get_ydata()) == [1.3, 1.31, 1.32]
    assert list(by_label["category 1: IT at UPS output"].get_xdata()) == [minute(0), minute(1), minute(2)]
    assert list(by_label["target 1.25"].get_ydata()) == [1.25, 1.25]


def test_the_heat_map_has_one_cell_per_rack_and_minute() -> None:
    windows = [{"time": minute(n), "entity": rack, "acc_util_mean": value}
               for rack, n, value in (("r1", 0, 0.5), ("r1", 2, 0.25), ("r2", 1, 1.0))]
    grid = charts.utilisation_heatmap(windows).axes[0].images[0].get_array()
    assert grid.shape == (2, 3)  # minute 1 of r1 and minutes 0 and 2 of r2 are blank
    assert grid[0][0] == 50.0 and grid[0][2] == 25.0 and grid[1][1] == 100.0 and grid.mask[1][0]


def test_firing_intervals_follow_the_alert_log() -> None:
    def record(n: int, fingerprint: str, state: str, suppressed: bool = False) -> dict:
        return {"time": minute(n), "fingerprint": fingerprint, "alertname": "Hot", "severity": "warning",
                "where": fingerprint, "state": state, "suppressed": suppressed}

    records = [record(0, "a", "pending"), record(1, "a", "firing"), record(3, "a", "keep_firing", True),
               record(4, "a", "inactive"), record(5, "b", "firing")]
    assert charts.firing_intervals(records, SPAN.stop) == [
        charts.Interval("Hot a", "warning", minute(1), minute(4), True),
        charts.Interval("Hot b", "warning", minute(5), SPAN.stop, False),
    ]


def test_figures_without_data_say_so() -> None:
    for figure in (charts.pue_chart([], None, None), charts.energy_chart([]), charts.coolant_chart([]),
                   charts.alert_timeline([], SPAN), charts.power_chart([]), charts.utilisation_heatmap([])):
        assert figure.axes[0].texts, "an empty figure must say that there is nothing to show"


def test_the_page_escapes_everything_and_inlines_each_figure() -> None:
    figures = [Chart("a", "<b>A</b>", "caption & more", charts.energy_chart([])),
               Chart("b", "B", "second", charts.energy_chart([]))]
    page = render_html("<script>alert(1)</script>", SPAN, ["PUE <1.2>"], figures, [b"png-a", b"png-b"], NOW)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;A&lt;/b&gt;" in page and "caption &amp; more" in page and "PUE &lt;1.2&gt;" in page
    assert page.count("<img ") == 2 and 'src="data:image/png;base64,cG5nLWE="' in page
    assert not re.search(r"https?://", page)
