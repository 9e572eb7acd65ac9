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
from dcpulse.streams.stage import Outputs, PartitionStage, new_state
from dcpulse.streams.alertrules import DEFAULT_RULES, RulesError, load_rules, parse_rules

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


def _recording(tmp_path, faults: list[str]) -> Path:
    """The small site with `faults`, 6 simulated minutes, as a recording (no broker)."""
    topic = InMemoryTopic(1)
    sim = ScenarioSimulator(build_scenario(["small"], None, faults, 7, T0))
    run_scenario(sim, 360.0, None, topic.publish_raw, topic.broadcast)
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


@pytest.mark.parametrize("fault, expected", [
    ("coolant_leak:small@1m+2m", {"coolant_leak", "cdu_reservoir_level_low", "cdu_loop_pressure_low"}),
    ("cdu_pump_failure:small@1m+2m", {"cdu_pump_redundancy_lost", "accelerator_temperature_high",
                                      "accelerator_thermal_throttling"}),
    ("hot_spot:small@1m+3m", {"rack_inlet_above_allowable", "rack_inlet_above_a2_allowable"}),
    ("sensor_dropout:small@1m+2m", {"device_not_reporting"}),
])
def test_each_fault_raises_its_default_rules(tmp_path, fault: str, expected: set[str]) -> None:
    result = CliRunner().invoke(main, ["alerts", "replay", str(_recording(tmp_path, [fault])), "--json"])
    fired = {orjson.loads(line)["labels"]["alertname"] for line in result.output.splitlines()
             if orjson.loads(line)["new"] == "firing"}
    assert expected <= fired


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
