"""Alert rules on inputs beyond a sample's own metrics (streams/alertrules.py DERIVED, the
pseudo-kinds rack / agent / site, `threshold_from`): their validation, the rule engine
(streams/alerting.py) and the stage that computes them (streams/stage.py), without servers."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.alerting import RuleEngine, Where
from dcpulse.streams.alertrules import RulesError, load_rules, parse_rules
from dcpulse.streams.stage import Outputs, PartitionStage, new_state
from dcpulse.streams.validation import epoch_ms, iso_ms

from tests.unit.test_alerting import sample
from tests.unit.test_stage import S, T0, ToySite, batch, watermark
from tests.unit.test_stage import sample as raw_sample

DEFAULTS = {rule.name: rule for rule in load_rules()}


def rule_text(**fields: object) -> str:
    return "[[rule]]\n" + "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in fields.items())


# ---- validation of the new inputs ----------------------------------------------------------------

@pytest.mark.parametrize("fields, problem", [
    ({"kind": "server", "metric": "@made_up_s", "condition": "above", "threshold": 1},
     "metric '@made_up_s' is not a derived input"),
    ({"kind": "server", "metric": "@heat_kw", "condition": "above", "threshold": 1},
     "metric '@heat_kw' exists for cdu rules, not kind "),
    ({"kind": "rack", "metric": "power_kw", "condition": "above", "threshold": 1},
     "a rack rule judges its silence: condition must be nodata"),
    ({"kind": "agent", "metric": "errors", "condition": "above", "threshold": 1},
     "a agent rule judges a derived input: one of ['@dead_letters_per_min']"),
    ({"kind": "any", "condition": "nodata", "threshold": 30},
     "nodata is judged per device or rack, not per any"),
    ({"kind": "rack", "metric": "@unchanged_s", "condition": "nodata", "threshold": 30},
     "metric '@unchanged_s' exists for device rules, not kind 'rack'"),
    ({"kind": "site", "metric": "pue", "condition": "above", "threshold": 1.5},
     "a site rule judges a derived input: one of ['@pue_15m']"),
], ids=["unknown_derived", "heat_on_server", "rack_not_nodata", "agent_plain_metric", "nodata_any",
        "device_input_on_rack", "site_plain_metric"])
def test_a_rule_on_an_input_its_kind_does_not_have_is_refused_naming_the_rule_and_the_problem(
        fields: dict, problem: str) -> None:
    with pytest.raises(RulesError) as refused:
        parse_rules(rule_text(name="bad_input", **fields), "my_rules.toml")
    message = str(refused.value)
    assert message.startswith("my_rules.toml: rule 'bad_input': field (rule): ")
    assert problem in message


@pytest.mark.parametrize("kind, metric", [("server", "@heat_kw"), ("pdu", "@dead_letters_per_min")])
def test_a_refusal_names_a_device_kind_by_its_name_as_written_in_the_file(kind: str, metric: str) -> None:
    with pytest.raises(RulesError) as refused:
        parse_rules(rule_text(name="bad_input", kind=kind, metric=metric, condition="above", threshold=1))
    assert f"not kind '{kind}'" in str(refused.value)


@pytest.mark.parametrize("kind, metric", [
    ("any", "@clock_ahead_s"), ("pdu", "@unchanged_s"), ("cdu", "@heat_kw"),
    ("agent", "@dead_letters_per_min"), ("site", "@pue_15m"),
])
def test_a_derived_input_is_accepted_on_the_kinds_it_exists_for(kind: str, metric: str) -> None:
    [rule] = parse_rules(rule_text(name="ok", kind=kind, metric=metric, condition="above", threshold=1))
    assert (rule.kind, rule.metric) == (kind, metric)


def test_a_whole_rack_nodata_rule_is_accepted() -> None:
    [rule] = parse_rules(rule_text(name="rack_quiet", kind="rack", condition="nodata", threshold=60))
    assert rule.kind == "rack" and rule.condition == "nodata"


# ---- threshold_from: a site's own PUE target -----------------------------------------------------

PUE = [DEFAULTS["pue_above_target"]]  # above 1.5 (clear 1.48), threshold_from pue_target


def pue(engine: RuleEngine, site: str, value: float, minute: int) -> list[tuple[str, float]]:
    events = engine.observe_values(site, Where(site, "site"), {"@pue_15m": value}, T0 + minute * 60 * S)
    return [(e.transition.new, e.value) for e in events]


def test_a_site_pue_rule_judges_against_the_sites_own_target() -> None:
    engine = RuleEngine(PUE, site_thresholds={"lean": {"pue_target": 1.25}})
    assert pue(engine, "lean", 1.24, 0) == []
    [event] = engine.observe_values("lean", Where("lean", "site"), {"@pue_15m": 1.3}, T0 + 60 * S)
    assert (event.transition.new, event.value) == ("firing", 1.3)  # 1.3 is above 1.25, below the pack's 1.5
    assert event.labels == {"alertname": "pue_above_target", "severity": "warning", "site": "lean",
                            "device": "lean", "kind": "site"}
    assert "above its target 1.25" in event.annotations["summary"]


def test_a_site_unknown_to_the_site_model_falls_back_to_the_rules_threshold() -> None:
    engine = RuleEngine(PUE, site_thresholds={"lean": {"pue_target": 1.25}})
    assert pue(engine, "elsewhere", 1.3, 0) == []
    assert pue(engine, "elsewhere", 1.5, 1) == []  # not above 1.5
    assert pue(engine, "elsewhere", 1.55, 2) == [("firing", 1.55)]


def test_the_clear_threshold_keeps_its_distance_below_the_sites_target() -> None:
    engine = RuleEngine(PUE, site_thresholds={"lean": {"pue_target": 1.25}})  # clear: 1.25 - 0.02 = 1.23
    assert pue(engine, "lean", 1.3, 0) == [("firing", 1.3)]
    assert pue(engine, "lean", 1.235, 1) == []  # inside the hysteresis band: still firing
    assert pue(engine, "lean", 1.22, 2) == [("inactive", 1.22)]


# ---- a ratio whose denominator is gone -----------------------------------------------------------

NEAR_CAP = parse_rules(rule_text(name="near_cap", kind="pdu", metric="power_kw", divide_by="rated_kw",
                                 condition="above", threshold=0.95, clear=0.9))


@pytest.mark.parametrize("denominator", [{"rated_kw": 0.0}, {}], ids=["zero", "absent"])
def test_a_firing_ratio_alert_whose_denominator_drops_out_resolves_instead_of_staying(denominator: dict) -> None:
    engine = RuleEngine(NEAR_CAP)
    fired = engine.observe("s", sample("pdu", "pdu-1", 0, {"power_kw": 19.2, "rated_kw": 20.0}, rack="k1"))
    assert [(e.transition.new, round(e.value, 3)) for e in fired] == [("firing", 0.96)]
    gone = engine.observe("s", sample("pdu", "pdu-1", 1, {"power_kw": 19.2, **denominator}, rack="k1"))
    assert [(e.transition.new, e.transition.resolved) for e in gone] == [("inactive", True)]
    assert gone[0].fingerprint == fired[0].fingerprint
    # and with its denominator back the ratio is judged afresh
    again = engine.observe("s", sample("pdu", "pdu-1", 2, {"power_kw": 19.2, "rated_kw": 20.0}, rack="k1"))
    assert [e.transition.new for e in again] == ["firing"]


def test_a_cdu_heat_alert_on_a_derived_input_resolves_when_its_capacity_reads_zero() -> None:
    engine = RuleEngine([DEFAULTS["cdu_heat_above_capacity"]])  # @heat_kw / capacity_kw above 1.0, for 120 s
    events = []
    for i in range(14):  # 600 kW carried by a CDU rated 500 kW: 1.2 of capacity for 130 s
        events += engine.observe("s", sample("cdu", "cdu-1", i, {"capacity_kw": 500.0, "flow_l_min": 860.0}),
                                 derived={"@heat_kw": 600.0})
    assert [e.transition.new for e in events] == ["pending", "firing"]
    gone = engine.observe("s", sample("cdu", "cdu-1", 14, {"capacity_kw": 0.0, "flow_l_min": 860.0}),
                          derived={"@heat_kw": 600.0})
    assert [(e.rule, e.transition.new, e.transition.resolved) for e in gone] == [
        ("cdu_heat_above_capacity", "inactive", True)]


# ---- the stage: rack NoData, stuck values, device clocks, dead letters per agent ------------------

def run_stage(records: list) -> Outputs:
    """Records (partition, Kafka timestamp, key, value) through one stage with the default rules."""
    stage = PartitionStage("raw", 0, 1, new_state(0, 16), ValidationSettings(), AnalyticsSettings(), load_rules())
    out = Outputs()
    for offset, (_, ts, key, value) in enumerate(records):
        stage.handle(out, offset, ts, key, value)
    assert "stage_error" not in out.counts
    return out


def alerts(out: Outputs, alertname: str) -> list[dict]:
    return [e.to_json() for e in out.alerts if e.rule == alertname]


def edit(records: list, agent: bytes, ticks: range, change) -> list:
    """`change(batch dict)` applied to the agent's batches of ticks `ticks` (tick k at T0 + k * 10 s)."""
    first, last = T0 + ticks.start * 10 * S, T0 + ticks.stop * 10 * S
    out = []
    for partition, ts, key, value in records:
        if key == agent and first <= ts < last:
            doc = orjson.loads(value)
            change(doc)
            value = orjson.dumps(doc) if doc["samples"] else None
        if value is not None:
            out.append((partition, ts, key, value))
    return out


def drop(*devices: str):
    def change(doc: dict) -> None:
        doc["samples"] = [s for s in doc["samples"] if s["device"] not in devices]
    return change


def skew(device: str, by_ms: int):
    def change(doc: dict) -> None:
        for s in doc["samples"]:
            if s["device"] == device:
                s["ts"] = iso_ms(epoch_ms(datetime.fromisoformat(s["ts"])) + by_ms)
    return change


def watermarks(records: list) -> set[str]:
    return {orjson.loads(value)["ts"] for _, _, key, value in records if key.endswith(b"/~watermark")}


RACK2 = b"s1/rack-h1-k2"


def test_a_rack_whose_every_device_stops_raises_rack_not_reporting_and_resolves_when_it_returns() -> None:
    site = ToySite(racks=2)
    records = edit(site.records(16, lambda _k: 0, 1), RACK2, range(4, 10), drop("pdu-h1-k2", "h1-k2-s1"))
    out = run_stage(records)
    rack = alerts(out, "rack_not_reporting")
    assert [(e["labels"]["rack"], e["new"]) for e in rack] == [("h1-k2", "firing"), ("h1-k2", "inactive")]
    firing = rack[0]
    assert firing["labels"]["device"] == "h1-k2" and firing["labels"]["kind"] == "rack"
    assert firing["value"] > 35  # seconds of the whole rack's silence in event time
    assert firing["at"] in watermarks(records)
    # the devices' own silence is raised as well (the alert book suppresses it under the rack)
    assert {e["labels"]["device"] for e in alerts(out, "device_not_reporting") + alerts(out, "pdu_not_reporting")
            if e["new"] == "firing"} == {"h1-k2-s1", "pdu-h1-k2"}


def test_a_silent_racks_resolution_carries_the_fingerprint_of_its_firing_whatever_device_reported_last() -> None:
    """A rack's PDU is on the UPS feed only; its server is also on CDU c1's loop. Before the
    silence the server's sample is the rack's newest, after it the PDU's: the rack is the same
    entity, so its firing and its resolution must be the same alert (one fingerprint)."""
    records = []
    for i in range(12):
        t = T0 + i * 10 * S
        if not 3 <= i < 9:  # ticks 3-8: the whole rack is silent
            server_ms, pdu_ms = (t + 200, t + 100) if i < 3 else (t + 100, t + 200)
            records.append((0, t, *batch(
                "rack-k1",
                raw_sample("pdu-k1", "pdu", i, pdu_ms, {"power_kw": 10.0 + i, "rated_kw": 20.0},
                           hall="h1", rack="k1", feed="ups-h1"),
                raw_sample("k1-s1", "server", i, server_ms, {"power_w": 900.0 + i},
                           hall="h1", rack="k1", cdu="c1", feed="ups-h1"))))
        records.append((0, t, *watermark(t + 9 * S)))
    firing, resolution = alerts(run_stage(records), "rack_not_reporting")
    assert (firing["new"], resolution["new"], resolution["resolved"]) == ("firing", "inactive", True)
    assert resolution["fingerprint"] == firing["fingerprint"]


def test_one_silent_device_in_a_rack_that_still_reports_is_not_a_silent_rack() -> None:
    site = ToySite(racks=2)
    records = edit(site.records(12, lambda _k: 0, 1), RACK2, range(4, 13), drop("h1-k2-s1"))
    out = run_stage(records)
    assert alerts(out, "rack_not_reporting") == []
    assert [(e["labels"]["device"], e["new"]) for e in alerts(out, "device_not_reporting")] == [("h1-k2-s1", "firing")]


def stuck_feed(ticks: int, inlet_c) -> list:
    """Two servers of one rack, every 10 s, with a watermark per tick: srv-stuck repeats every
    value exactly; srv-live is the same except for its inlet temperature `inlet_c(i)`."""
    records = []
    for i in range(ticks):
        t = T0 + i * 10 * S
        metrics = {"power_w": 900.0, "cpu_util": 0.4, "fan_w": 80.0}
        key, value = batch("rack-h1-k1",
                           raw_sample("srv-stuck", "server", i, t + 100, {**metrics, "inlet_c": 24.0},
                                      hall="h1", rack="h1-k1"),
                           raw_sample("srv-live", "server", i, t + 100, {**metrics, "inlet_c": inlet_c(i)},
                                      hall="h1", rack="h1-k1"))
        records.append((0, t, key, value))
        records.append((0, t, *watermark(t + 9 * S)))
    return records


def test_a_server_whose_every_metric_repeats_exactly_is_stuck_after_120_s() -> None:
    out = run_stage(stuck_feed(16, lambda i: 24.0 + 0.1 * (i % 2)))
    stuck = alerts(out, "server_sensor_stuck")
    assert [(e["labels"]["device"], e["new"]) for e in stuck] == [("srv-stuck", "firing")]
    assert stuck[0]["value"] == 130.0  # the first sample more than 120 s after the values froze


def test_no_stuck_alert_before_120_s_of_identical_values() -> None:
    out = run_stage(stuck_feed(13, lambda i: 24.0 + 0.1 * (i % 2)))  # the last sample: 120 s unchanged
    assert alerts(out, "server_sensor_stuck") == []


def test_a_stuck_server_whose_values_move_again_is_resolved() -> None:
    records = stuck_feed(16, lambda i: 24.0 + 0.1 * (i % 2))
    records = edit(records, b"s1/rack-h1-k1", range(15, 16),
                   lambda doc: doc["samples"][0]["metrics"].update(inlet_c=24.3))
    stuck = alerts(run_stage(records), "server_sensor_stuck")
    assert [(e["labels"]["device"], e["new"], e["resolved"]) for e in stuck] == [
        ("srv-stuck", "firing", False), ("srv-stuck", "inactive", True)]


def test_a_device_whose_samples_are_refused_as_clock_skew_raises_device_clock_ahead_at_the_sites_watermarks() -> None:
    site = ToySite(racks=2)
    ahead_ms = 120 * S  # beyond the 60 s allowed (plus the 10 s of producer time since the watermark)
    records = edit(site.records(16, lambda _k: 0, 1), b"s1/rack-h1-k1", range(4, 12), skew("h1-k1-s1", ahead_ms))
    out = run_stage(records)
    refused = [d for _, d in out.dead if d.reason == "clock_skew"]
    assert len(refused) == 8 and out.counts["clock_skew"] == 8
    ahead = alerts(out, "device_clock_ahead")
    assert [(e["labels"]["device"], e["new"]) for e in ahead] == [
        ("h1-k1-s1", "pending"), ("h1-k1-s1", "firing"), ("h1-k1-s1", "inactive")]
    assert ahead[0]["value"] == pytest.approx(121.1)  # 120 s skew + 0.1 s phase + 1 s to the watermark
    assert {e["at"] for e in ahead} <= watermarks(records)  # the site's event time, not the device's clock
    skewed = {iso_ms(T0 + k * 10 * S + 100 + ahead_ms) for k in range(4, 12)}
    assert not {e["at"] for e in ahead} & skewed
    assert alerts(out, "device_clock_behind") == []


def test_a_device_clock_a_little_ahead_but_within_the_allowed_skew_raises_nothing() -> None:
    site = ToySite(racks=2)
    records = edit(site.records(12, lambda _k: 0, 1), b"s1/rack-h1-k1", range(2, 12), skew("h1-k1-s1", 20 * S))
    out = run_stage(records)
    assert out.counts["clock_skew"] == 0 and alerts(out, "device_clock_ahead") == []


def with_malformed(site: ToySite, ticks: int, key: bytes) -> list:
    """The site's ticks, each with one record that is not JSON, keyed to the agent `key`."""
    records = []
    for k in range(1, ticks + 1):
        tick = site.records(1, lambda _k: 0, 1, first_tick_ms=T0 + k * site.dt_ms)
        *batches, mark = tick
        records += [*batches, (0, mark[1], key, b"{not json"), mark]
    return records


def test_malformed_records_of_one_agent_raise_agent_dead_letters_for_that_agent() -> None:
    out = run_stage(with_malformed(ToySite(racks=2), 14, b"s1/rack-h1-k1"))  # 6 per minute: above 5
    assert out.counts["malformed_json"] == 14
    dead = alerts(out, "agent_dead_letters")
    assert [(e["labels"]["device"], e["new"]) for e in dead] == [("rack-h1-k1", "pending"), ("rack-h1-k1", "firing")]
    assert dead[0]["labels"] == {"alertname": "agent_dead_letters", "severity": "warning", "site": "s1",
                                 "device": "rack-h1-k1", "kind": "agent"}
    assert dead[1]["value"] == pytest.approx(6.0)  # one record per 10 s of event time
    pending, firing = (epoch_ms(datetime.fromisoformat(e["at"])) for e in dead)
    assert firing - pending == 60 * S  # for_s


def test_clock_skew_refusals_do_not_count_as_the_agents_dead_letters() -> None:
    site = ToySite(racks=2)
    records = site.records(16, lambda _k: 0, 1)
    for device in ("pdu-h1-k2", "h1-k2-s1"):  # 2 refusals per 10 s: 12 per minute, all clock_skew
        records = edit(records, RACK2, range(0, 17), skew(device, 300 * S))
    out = run_stage(records)
    assert out.counts["clock_skew"] == 32
    assert alerts(out, "agent_dead_letters") == []
    assert {e["labels"]["device"] for e in alerts(out, "device_clock_ahead")} == {"pdu-h1-k2", "h1-k2-s1"}


def test_an_agents_dead_letter_alert_resolves_once_its_records_are_good_again() -> None:
    site = ToySite(racks=2)
    records = with_malformed(site, 14, b"s1/rack-h1-k1")
    records += site.records(4, lambda _k: 0, 1, first_tick_ms=T0 + 15 * site.dt_ms)
    dead = alerts(run_stage(records), "agent_dead_letters")
    assert [(e["new"], e["resolved"]) for e in dead] == [("pending", False), ("firing", False), ("inactive", True)]
    assert dead[-1]["value"] == 0.0
