"""The console's pure parts: the floor from the site model, rack colours, and pages rendered from
a stand-in reader (no server): escaping, and the content security policy that keeps them local."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.testclient import TestClient

from dcpulse.producers.sitemodel import load_preset
from dcpulse.views.console import create_app
from dcpulse.views.floor import Hall, Row, band, colour, floor_from_model, floor_from_racks, hottest

MARKUP = '<script>window.__xss=1</script>'


def test_the_small_sites_floor_comes_from_its_model_with_each_cdu_and_the_racks_it_cools() -> None:
    (hall,) = floor_from_model(load_preset("small"))
    assert [row.name for row in hall.rows] == ["h1-r01", "h1-r02"]
    assert hall.rows[0].racks == [("h1-r01-k01", "cdu-h1-01"), ("h1-r01-k02", "cdu-h1-01")]
    assert hall.cdus == {"cdu-h1-01": ["h1-r01-k01", "h1-r01-k02"], "cdu-h1-02": ["h1-r02-k01", "h1-r02-k02"]}


def test_an_air_cooled_hall_has_no_cdu_links_and_an_unknown_site_is_drawn_from_its_racks() -> None:
    air = [h for h in floor_from_model(load_preset("hengqin")) if h.cooling == "air"]
    assert air and all(not h.cdus and all(cdu is None for row in h.rows for _, cdu in row.racks) for h in air)
    (hall,) = floor_from_racks({"k2": "a", "k1": "a"})
    assert hall.rows[0].racks == [("k1", None), ("k2", None)]


def test_rack_colours_follow_the_thresholds() -> None:
    assert [colour("inlet", v) for v in (25.0, 27.0, 31.9, 32.0)] == ["ok", "warn", "warn", "bad"]
    assert [colour("power", v) for v in (0.5, 0.8, 0.95)] == ["ok", "warn", "bad"]
    assert [colour("util", v) for v in (0.0, 0.5, 1.0)] == ["u0", "u2", "u4"]
    assert [colour("alert", v) for v in (0, 1, 2, 3)] == ["ok", "ok", "warn", "bad"]
    assert colour("heat", None) == "none" == band(None, 1, 2)
    assert hottest({"a": 30.0, "b": 31.0}) == "b" and hottest({}) is None


class StandIn:
    """What the pages need of a Reader, with a device name carrying markup."""

    models: dict = {}

    def national(self):
        return [{"site": "s1", "pue_now": 1.31, "pue_24h": 1.2, "target": 1.25, "it_kw": 100.0, "cooling_kw": 20.0,
                 "alerts": {"critical": 1, "warning": 0, "info": 0}, "updated": datetime(2026, 7, 1, tzinfo=UTC),
                 "trend": [1.2, 1.3, 1.31]}]

    def floor(self, site):
        return [Hall("h1", "liquid", [Row("r1", [(MARKUP, "c1")])], {"c1": [MARKUP]})]

    def rack_values(self, site, metric):
        return {MARKUP: 33.0}

    def active_alerts(self, site=None):
        return [{"_time": datetime(2026, 7, 1, tzinfo=UTC), "alertname": "hot", "severity": "critical", "site": "s1",
                 "device": MARKUP, "rack": MARKUP, "summary": MARKUP, "cause": "c1", "suppressed_by": [],
                 "suppresses": []}]

    def history(self, site=None):
        return []


def test_pages_escape_what_telemetry_names_and_allow_only_their_own_resources() -> None:
    client = TestClient(create_app(StandIn()))  # type: ignore[arg-type]
    national = client.get("/")
    assert national.status_code == 200 and "above target" in national.text
    assert "default-src 'self'" in national.headers["content-security-policy"]
    for path in ("/site/s1", "/alerts"):
        page = client.get(path)
        assert page.status_code == 200
        assert MARKUP not in page.text and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text
    assert client.get("/site/s1?metric=nonsense").status_code == 400
    assert 'src="http' not in national.text and 'href="http' not in national.text


def test_a_sparkline_scales_the_series_and_the_target_into_its_box() -> None:
    from dcpulse.views.console import sparkline

    line = sparkline([1.2, 1.4], 1.3, width=100, height=20)
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in line["points"].split()]
    assert (x0, x1) == (0.0, 100.0) and y1 < line["target_y"] < y0  # higher PUE is drawn higher
    assert 0 <= y1 and y0 <= 20
    assert sparkline([], None)["points"] == ""


def test_the_pue_trend_weighs_minutes_by_energy_and_uses_minutes_for_a_short_run() -> None:
    from datetime import timedelta

    from dcpulse.views.console_data import pue_trend

    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    short = [{"_time": t0 + timedelta(minutes=i), "facility_kwh": 1.2 + i * 0.1, "it_kwh": 1.0} for i in range(3)]
    assert [round(v, 3) for v in pue_trend(short)] == [1.2, 1.3, 1.4]
    long = [{"_time": t0 + timedelta(minutes=i), "facility_kwh": 2.0 if i < 15 else 1.0, "it_kwh": 1.0 if i < 15 else 0.5}
            for i in range(180)]
    assert pue_trend(long) == [2.0] * 12
