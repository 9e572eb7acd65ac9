import pytest

from dcpulse.producers.scenario_args import build_scenario, parse_fault
from dcpulse.producers.sitemodel import (AcceleratorModel, FaultSpec, Scenario, WorkloadSpec, load_preset,
                                         preset_names)


def test_presets_match_their_public_figures() -> None:
    assert {"hengqin", "changsha", "shaoguan", "shaoguan-tencent", "pengcheng", "small"} <= set(preset_names())
    assert load_preset("hengqin").counts()["servers"] == 2390
    assert load_preset("changsha").counts()["servers"] == 1024
    assert load_preset("pengcheng").counts()["accelerators"] == 4096
    shaoguan = load_preset("shaoguan")
    assert shaoguan.pue_target == 1.25 and all(h.cooling == "liquid" for h in shaoguan.halls)
    assert {h.server.accelerator.kind for h in load_preset("pengcheng").halls} == {"npu"}
    tencent = load_preset("shaoguan-tencent")
    assert tencent.counts()["racks"] == 30_000 and tencent.pue_target == 1.25
    liquid_kw = sum(h.design_it_kw() for h in tencent.halls if h.cooling == "liquid")
    assert liquid_kw / tencent.counts()["design_it_kw"] > 0.5  # a large liquid-cooled share
    for name in preset_names():
        site = load_preset(name)
        assert site.source and (site.assumptions or name == "small")


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'; known: changsha"):
        load_preset("nope")


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="idle_w must be below tdp_w"):
        AcceleratorModel(name="x", tdp_w=100, idle_w=200)
    with pytest.raises(ValueError, match="training_share"):
        WorkloadSpec(training_share=0.8, inference_share=0.5)
    small = load_preset("small")
    with pytest.raises(ValueError, match="unknown site"):
        Scenario(sites=[small], faults=[FaultSpec(kind="chiller_trip", site="elsewhere")])
    with pytest.raises(ValueError, match="site names must be unique"):
        Scenario(sites=[small, small])


def test_parse_fault_full_and_short_forms() -> None:
    full = parse_fault("cdu_pump_failure:small:cdu-h1-02@2m+90s=0.5", "ignored")
    assert (full.kind, full.site, full.target, full.start_s, full.duration_s, full.magnitude) == (
        "cdu_pump_failure", "small", "cdu-h1-02", 120.0, 90.0, 0.5)
    short = parse_fault("chiller_trip", "small")
    assert (short.site, short.target, short.start_s, short.duration_s) == ("small", None, 0.0, 600.0)
    with pytest.raises(ValueError, match="bad --fault"):
        parse_fault("cdu pump", "small")
    with pytest.raises(ValueError):
        parse_fault("meteor_strike", "small")


def test_build_scenario_from_presets_with_faults_and_seed() -> None:
    scenario = build_scenario(["small", "pengcheng"], None, ["hot_spot:pengcheng@1m"], seed=11, start=None)
    assert [s.name for s in scenario.sites] == ["small", "pengcheng"]
    assert scenario.seed == 11 and scenario.faults[0].site == "pengcheng"
