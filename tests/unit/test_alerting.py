"""Alert rules (streams/alertrules.py) and the rule engine (streams/alerting.py), without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from dcpulse.cli import main
from dcpulse.contract import Sample
from dcpulse.producers.publisher import InMemoryTopic
from dcpulse.producers.recording import RecordedMessage, write_recording
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.alerting import RuleEngine
from dcpulse.streams.alertrules import DEFAULT_RULES, RulesError, load_rules, parse_rules
from dcpulse.streams.stage import Outputs, PartitionStage, new_state

from tests.unit.test_stage import T0 as T0_MS
from tests.unit.test_stage import ToySite

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def sample(kind: str, device: str, i: int, metrics: dict[str, float], **where: str) -> Sample:
    return Sample(device=device, kind=kind, seq=i, ts=T0 + timedelta(seconds=10 * i), metrics=metrics, **where)


def test_the_default_pack_loads_and_covers_the_plant() -> None:
    rules = load_rules()
    assert {r.kind for r in rules} >= {"server", "cdu", "leak_sensor", "pdu"}
    assert len({r.name for r in rules}) == len(rules)


@pytest.mark.parametrize("text, message", [
    ('[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "dp_bar"\ncondition = "above"\nthreshold = "high"',
     "rule 'x': field threshold"),
    ('[[rule]]\nname = "x"\nkind = "toaster"\nmetric = "t"\ncondition = "above"\nthreshold = 1',
     "rule 'x': field kind"),
    ('[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "t"\ncondition = "above"\nthreshold = 1\nclear = 2',
     "rule 'x'"),
    ('[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "t"\ncondition = "above"\nthreshold = 1\n'
     'annotations.summary = "{secret}"', "unknown fields ['secret']"),
    ('[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "t"\ncondition = "above"\nthreshold = 1\n'
     '[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "t"\ncondition = "below"\nthreshold = 1', "duplicate rule name"),
    ("rule = [", "not valid TOML"),
    ("[other]\n", "unknown top-level keys"),
])
def test_a_bad_rules_file_is_refused_naming_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rules(text)


def test_a_missing_rules_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(RulesError, match="cannot be read"):
        load_rules(tmp_path / "absent.toml")


def test_a_leak_fires_at_once_with_topology_labels_and_is_latched_until_dry_for_a_while() -> None:
    engine = RuleEngine(load_rules())
    where = {"hall": "h1", "cdu": "cdu-1"}
    events = []
    for i, leak in enumerate([0, 1, 0, 1, 0] + [0] * 40):
        events += engine.observe("small", sample("leak_sensor", "leak-1", i, {"leak": float(leak)}, **where))
    moves = [(e.transition.at_ms, e.transition.new) for e in events]
    t = lambda i: int((T0 + timedelta(seconds=10 * i)).timestamp() * 1000)  # noqa: E731
    assert moves[0] == (t(1), "firing")
    assert events[0].labels == {"alertname": "coolant_leak", "severity": "critical", "site": "small",
                                "device": "leak-1", "kind": "leak_sensor", "hall": "h1", "cdu": "cdu-1"}
    assert "Leak detected by leak-1 on the loop of cdu-1 in hall h1" == events[0].annotations["summary"]
    resolved = [e for e in events if e.transition.resolved]
    assert len(resolved) == 1 and resolved[0].transition.at_ms == t(4) + 300_000  # dry for keep_firing_for


def test_each_accelerator_is_its_own_alert_and_hysteresis_holds_it() -> None:
    engine = RuleEngine(parse_rules('[[rule]]\nname = "hot"\nkind = "server"\nmetric = "acc*_temp_c"\n'
                                    'condition = "above"\nthreshold = 85\nclear = 83'))
    temps = [(80, 86), (80, 84), (86, 82.9)]
    events = []
    for i, (a0, a1) in enumerate(temps):
        events += engine.observe("s", sample("server", "srv-1", i, {"acc0_temp_c": a0, "acc1_temp_c": a1,
                                                                     "inlet_c": 25.0}, rack="k1"))
    assert [(e.labels["metric"], e.transition.new) for e in events] == [
        ("acc1_temp_c", "firing"), ("acc0_temp_c", "firing"), ("acc1_temp_c", "inactive")]
    assert events[0].fingerprint == events[2].fingerprint != events[1].fingerprint


def test_rate_and_ratio_rules() -> None:
    engine = RuleEngine(parse_rules(
        '[[rule]]\nname = "falling"\nkind = "cdu"\nmetric = "pressure_bar"\ncondition = "rate_below"\n'
        'threshold = -0.005\n'
        '[[rule]]\nname = "near_cap"\nkind = "pdu"\nmetric = "power_kw"\ndivide_by = "rated_kw"\n'
        'condition = "above"\nthreshold = 0.95\n'))
    pressures = [3.5, 3.5, 3.49, 3.48]  # -0.06 bar/min from the third sample on
    fired = []
    for i, p in enumerate(pressures):
        fired += [e.rule for e in engine.observe("s", sample("cdu", "cdu-1", i, {"pressure_bar": p}))]
    assert fired == ["falling"]
    out = engine.observe("s", sample("pdu", "pdu-1", 0, {"power_kw": 19.2, "rated_kw": 20.0}))
    assert [(e.rule, round(e.value, 3)) for e in out] == [("near_cap", 0.96)]
    assert engine.observe("s", sample("pdu", "pdu-2", 0, {"power_kw": 19.2, "rated_kw": 0.0})) == []


def test_the_default_pack_file_is_the_one_loaded() -> None:
    assert DEFAULT_RULES.exists() and load_rules(DEFAULT_RULES) == load_rules()


def _recording(tmp_path, faults: list[str], start: datetime = T0, seconds: float = 360.0) -> Path:
    """The small site with `faults` (6 simulated minutes from midnight unless told), as a recording."""
    topic = InMemoryTopic(1)
    sim = ScenarioSimulator(build_scenario(["small"], None, faults, 7, start))
    run_scenario(sim, seconds, None, topic.publish_raw, topic.broadcast)
    offsets: dict[int, int] = {}
    messages = []
    for partition, ts, key, value in topic.records:
        offsets[partition] = offsets.get(partition, -1) + 1
        messages.append(RecordedMessage("t", partition, offsets[partition], ts if ts is not None else -1, key, value))
    path = tmp_path / "small.jsonl.gz"
    write_recording(path, ["t"], messages)
    return path


def test_alerts_replay_raises_the_faults_alert_on_its_entity_and_repeats_exactly(tmp_path) -> None:
    path = _recording(tmp_path, ["coolant_leak:small@1m+2m"])
    runner = CliRunner()
    first = runner.invoke(main, ["alerts", "replay", str(path), "--json"])
    assert first.exit_code == 0, first.output
    events = [orjson.loads(line) for line in first.output.splitlines()]
    leaks = [e for e in events if e["labels"]["alertname"] == "coolant_leak"]
    assert leaks and leaks[0]["new"] == "firing" and leaks[0]["labels"]["site"] == "small"
    assert leaks[0]["at"] >= "2026-07-01T00:01:00"
    assert runner.invoke(main, ["alerts", "replay", str(path), "--json"]).output == first.output


def test_alerts_replay_of_a_fault_free_run_raises_nothing(tmp_path) -> None:
    result = CliRunner().invoke(main, ["alerts", "replay", str(_recording(tmp_path, [])), "--json"])
    assert result.exit_code == 0 and result.output == ""


def test_alerts_rules_names_the_rule_at_fault(tmp_path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\nkind = "cdu"\nmetric = "t"\ncondition = "sideways"\nthreshold = 1\n')
    result = CliRunner().invoke(main, ["alerts", "rules", "--rules", str(bad)])
    assert result.exit_code == 1 and "rule 'x': field condition" in result.output


AFTERNOON = T0 + timedelta(hours=14)  # the small site's chiller trims the tower's free cooling then


# Each of the simulator's ten fault kinds at its default target, on the small site from 14:00:
# (fault, rule, entity) that must fire, and by when (seconds of event time after the fault
# starts; docs/alerts.md "Detection times"). The real-server fault matrix uses the same table.
FAULT_MATRIX = [
    ("cdu_pump_failure", "cdu_pump_redundancy_lost", "cdu-h1-01", 10),
    ("coolant_leak", "coolant_leak", "leak-cdu-h1-01", 10),
    ("filter_clog", "cdu_differential_pressure_high", "cdu-h1-01", 240),
    ("chiller_trip", "chiller_stopped_while_needed", "chiller-1", 80),
    ("hot_spot", "rack_inlet_above_a2_allowable", "h1-r01-k01-s01", 80),
    ("stuck_sensor", "server_sensor_stuck", "h1-r01-k01-s01", 140),
    ("sensor_dropout", "device_not_reporting", "h1-r01-k01-s01", 50),
    ("clock_skew", "device_clock_ahead", "h1-r01-k01-s01", 30),
    ("counter_reset", "energy_register_went_back", "pdu-h1-r01-k01", 10),
    ("malformed", "agent_dead_letters", "facility", 90),
]


# 10 simulated minutes from 14:00 with the fault from minute 1 to minute 5.
@pytest.mark.parametrize("fault, rule, entity, within_s", FAULT_MATRIX, ids=[row[0] for row in FAULT_MATRIX])
def test_each_fault_kind_raises_its_alert_on_its_entity_in_time_and_resolves(tmp_path, fault: str, rule: str,
                                                                            entity: str, within_s: float) -> None:
    path = _recording(tmp_path, [f"{fault}:small@1m+4m"], AFTERNOON, 600.0)
    result = CliRunner().invoke(main, ["alerts", "replay", str(path), "--json"])
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in result.output.splitlines()]
    mine = [e for e in events if e["labels"]["alertname"] == rule and e["labels"]["device"] == entity
            and e["old"] != e["new"]]
    fault_start = AFTERNOON + timedelta(minutes=1)
    fired = [e for e in mine if e["new"] == "firing"]
    assert fired, f"{rule} on {entity} never fired: {sorted({e['labels']['alertname'] for e in events})}"
    delay = (datetime.fromisoformat(fired[0]["at"]) - fault_start).total_seconds()
    assert 0 <= delay <= within_s
    assert mine[-1]["new"] == "inactive" and mine[-1]["resolved"], "still firing after the fault ended"
    assert not [e for e in events if e["new"] == "firing" and datetime.fromisoformat(e["at"]) < fault_start]


def test_a_pump_failure_suppresses_the_accelerator_alerts_of_the_racks_its_cdu_cools(tmp_path) -> None:
    path = _recording(tmp_path, ["cdu_pump_failure:small@1m+2m"], AFTERNOON, 300.0)
    events = [orjson.loads(line) for line in
              CliRunner().invoke(main, ["alerts", "replay", str(path), "--json"]).output.splitlines()]
    source = next(e for e in events if e["labels"]["alertname"] == "cdu_pump_redundancy_lost" and e["new"] == "firing")
    ended = next(e["at"] for e in events if e["fingerprint"] == source["fingerprint"] and e["resolved"])
    hot = [e for e in events if e["labels"]["alertname"].startswith("accelerator_") and e["new"] == "firing"
           and e["at"] < ended]
    assert hot and {e["labels"]["cdu"] for e in hot} == {"cdu-h1-01"}
    assert all(source["fingerprint"] in e["inhibited_by"] for e in hot)
    assert {e["cause"] for e in hot} == {"cdu-h1-01"} == {source["cause"]}


NEAR_CAP = parse_rules('[[rule]]\nname = "near_cap"\nkind = "pdu"\nmetric = "power_kw"\ndivide_by = "rated_kw"\n'
                       'condition = "above"\nthreshold = 0.95\nclear = 0.9\nfor_s = 20\n')


def _stage_events(records, restart_at: int | None) -> list[dict]:
    """The alert events of one partition's stage; with `restart_at`, the stage is checkpointed
    there and a new stage loaded from the checkpoint carries on (a worker restart)."""
    stage = PartitionStage("raw", 0, 1, new_state(0, 16), ValidationSettings(), AnalyticsSettings(), NEAR_CAP)
    out, table = Outputs(), {}
    for offset, (_, ts, key, value) in enumerate(records):
        if offset == restart_at:
            table.update(stage.state.dirty_buckets())
            state = new_state(0, 16)
            state.load(table)
            stage = PartitionStage("raw", 0, 1, state, ValidationSettings(), AnalyticsSettings(), NEAR_CAP)
        stage.handle(out, offset, ts, key, value)
    return [e.to_json() for e in out.alerts]


def test_the_stage_raises_alerts_and_a_restart_from_its_checkpoint_changes_nothing() -> None:
    site = ToySite(racks=2)
    records = site.records(6, lambda _k: 0, 1)
    site.pdu_kw = site.rated_kw * 0.97
    records += site.records(6, lambda _k: 0, 1, first_tick_ms=T0_MS + 7 * site.dt_ms)
    straight = _stage_events(records, None)
    assert [(e["labels"]["rack"], e["new"]) for e in straight] == [
        ("h1-k1", "pending"), ("h1-k2", "pending"), ("h1-k1", "firing"), ("h1-k2", "firing")]
    for cut in (len(records) // 2, len(records) - 5):
        assert _stage_events(records, cut) == straight


def test_a_silent_device_raises_nodata_with_its_topology_and_its_return_resolves_the_same_alert(tmp_path) -> None:
    result = CliRunner().invoke(main, ["alerts", "replay", str(_recording(tmp_path, ["sensor_dropout:small@1m+2m"])),
                                       "--json"])
    events = [orjson.loads(line) for line in result.output.splitlines()]
    silent = [e for e in events if e["labels"]["alertname"] == "device_not_reporting"]
    assert [e["new"] for e in silent] == ["firing", "inactive"]
    firing, back = silent
    assert firing["fingerprint"] == back["fingerprint"] and back["resolved"]
    assert {"site", "hall", "rack", "device"} <= set(firing["labels"]) and firing["value"] > 35
    assert "2026-07-01T00:01:00" < firing["at"] < "2026-07-01T00:02:00" < back["at"]


def test_a_nodata_rule_needs_seconds_and_no_clear() -> None:
    with pytest.raises(RulesError, match="must be > 0"):
        parse_rules('[[rule]]\nname = "x"\nkind = "cdu"\ncondition = "nodata"\nthreshold = 0\n')
    with pytest.raises(RulesError, match="clear has no meaning"):
        parse_rules('[[rule]]\nname = "x"\nkind = "cdu"\ncondition = "nodata"\nthreshold = 30\nclear = 20\n')


class _Alertmanager:
    """What the notifier posted (a pure unit test's stand-in for the server's API)."""

    def __init__(self) -> None:
        self.posts: list[dict] = []

    def post(self, alerts: list[dict]) -> None:
        self.posts.extend(alerts)


@pytest.mark.parametrize("rule, hot, cool, extra, most", [
    # Crossing both thresholds every sample: with `for` 60 s it would only ever be pending; the
    # flapping alert fires once.
    ("rack_power_near_provisioned", {"power_kw": 19.4}, {"power_kw": 18.0}, {"rated_kw": 20.0}, 1),
    # No `for`: each crossing notifies until flapping is judged, from the 11th evaluation on
    # (5 fire-resolve pairs), then one flapping alert instead of 55 more.
    ("accelerator_near_slowdown", {"acc0_temp_c": 89.0}, {"acc0_temp_c": 85.0}, {}, 6),
])
def test_a_value_oscillating_around_a_threshold_notifies_one_flapping_alert_not_a_storm(rule, hot, cool, extra,
                                                                                        most) -> None:
    from datetime import UTC as _UTC

    from dcpulse.settings import AlertmanagerSettings
    from dcpulse.sinks.notifier import Notifier
    from dcpulse.streams.alertbook import AlertBook
    from dcpulse.streams.alertrules import inhibitions

    rules = [r for r in load_rules() if r.name == rule]
    engine, book = RuleEngine(rules), AlertBook(inhibitions(rules))
    am = _Alertmanager()
    notifier = Notifier(am, AlertmanagerSettings(), "test", now=lambda: datetime(2026, 7, 2, tzinfo=_UTC))
    kind = rules[0].kind
    for i in range(120):  # 10 minutes crossing the threshold every sample, then 10 minutes calm
        values = (hot if i % 2 == 0 else cool) if i < 60 else cool
        for event in engine.observe("s", sample(kind, "dev-1", i, {**values, **extra}, rack="r1")):
            notifier.take(book.apply(event.to_json()))
        notifier.flush()
    firing = [p for p in am.posts if p["endsAt"] > "2026-07-02T00:00:00.000Z"]
    ended = [p for p in am.posts if p["endsAt"] == "2026-07-02T00:00:00.000Z"]
    label_sets = {tuple(sorted(p["labels"].items())) for p in am.posts}
    assert len(label_sets) <= 2  # the alert, and (no `for`) the same alert labelled flapping
    assert any(p["labels"].get("flapping") == "true" for p in firing)
    assert len(firing) == most and len(ended) == len(firing)  # not dozens; every one resolved in the end
