"""The simulator end to end without Kafka: determinism, contract, agent-level faults."""

from collections import Counter, defaultdict

import orjson
import pytest

from dcpulse.contract import Telemetry
from dcpulse.producers.run import parse_duration, run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.streams.validation import Rejection, validate


def digest(presets: list[str], seed: int, seconds: float = 120, faults: tuple[str, ...] = ()) -> str:
    sim = ScenarioSimulator(build_scenario(presets, None, list(faults), seed, None))
    return run_scenario(sim, seconds, None, lambda k, v, t: None).digest


def samples(faults: list[str], seconds: float = 300, seed: int = 7) -> dict[str, list[dict]]:
    """Every published message of the small preset, decoded, per device (bad ones under 'BAD')."""
    sim = ScenarioSimulator(build_scenario(["small"], None, faults, seed, None))
    out: dict[str, list[dict]] = defaultdict(list)

    def keep(key: bytes, value: bytes, _ts_ms: int) -> None:
        event = validate(value)
        if isinstance(event, Rejection):
            out["BAD"].append({"reason": event.reason, "key": key})
        else:
            assert key.decode() == event.key
            out[event.device].append(orjson.loads(value))

    run_scenario(sim, seconds, None, keep)
    return out


def test_same_seed_same_stream_different_seed_different_stream() -> None:
    first = digest(["small"], 7, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))
    assert first == digest(["small"], 7, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))
    assert first != digest(["small"], 8, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))


def test_several_sites_in_one_stream_are_deterministic_too() -> None:
    assert digest(["small", "pengcheng"], 3, seconds=30) == digest(["small", "pengcheng"], 3, seconds=30)


def test_every_message_honours_the_contract_and_keeps_per_device_order() -> None:
    by_device = samples([])
    assert "BAD" not in by_device
    kinds = {events[0]["kind"] for events in by_device.values()}
    assert {"facility_meter", "ups", "pdu", "server", "cdu", "leak_sensor", "crah", "chiller", "cooling_tower",
            "pump", "water_meter", "weather"} <= kinds
    for device, events in by_device.items():
        assert [e["seq"] for e in events] == list(range(len(events))), device
        times = [Telemetry.model_validate(e).ts for e in events]
        assert times == sorted(times), device
    server = by_device["h1-r01-k01-s01"][-1]["metrics"]
    assert {"power_w", "energy_kwh", "inlet_c", "acc0_power_w", "acc7_util", "acc3_temp_c", "acc0_throttle"} <= set(server)


def test_energy_registers_are_cumulative_and_consistent_with_power() -> None:
    meter = samples([], seconds=600)["facility-meter"]
    energies = [e["metrics"]["energy_kwh"] for e in meter]
    assert energies == sorted(energies) and energies[-1] > 0
    mean_kw = sum(e["metrics"]["power_kw"] for e in meter) / len(meter)
    assert energies[-1] == pytest.approx(mean_kw * 600 / 3600, rel=0.02)


def test_pump_failure_shows_in_the_published_cdu_and_server_data() -> None:
    data = samples(["cdu_pump_failure@60s+600s"], seconds=300)
    flows = [e["metrics"]["flow_l_min"] for e in data["cdu-h1-01"]]
    returns = [e["metrics"]["return_c"] for e in data["cdu-h1-01"]]
    assert min(flows[8:]) < 0.5 * flows[3]
    assert max(returns[8:]) > returns[3] + 5
    assert data["cdu-h1-01"][-1]["metrics"]["pumps_running"] == 1.0
    assert data["cdu-h1-02"][-1]["metrics"]["pumps_running"] == 2.0


def test_agent_faults_dropout_stuck_skew_reset() -> None:
    target = "h1-r01-k01-s02"
    healthy = samples([], seconds=300)
    data = samples([f"sensor_dropout:small:{target}@60s+60s", "stuck_sensor:small:h1-r02-k01-s01@60s+120s",
                    "clock_skew:small:h1-r01-k02-s01@0s+300s=120", "counter_reset:small:pdu-h1-r01-k01@150s"],
                   seconds=300)
    assert len(data[target]) == len(healthy[target]) - 6  # one minute of 10 s samples missing
    stuck = [e["metrics"]["inlet_c"] for e in data["h1-r02-k01-s01"][5:17]]  # t = 60 s .. 170 s
    assert len(set(stuck)) == 1
    skewed = Telemetry.model_validate(data["h1-r01-k02-s01"][0]).ts
    normal = Telemetry.model_validate(healthy["h1-r01-k02-s01"][0]).ts
    assert 119 < (skewed - normal).total_seconds() < 121
    energy = [e["metrics"]["energy_kwh"] for e in data["pdu-h1-r01-k01"]]
    drop = [i for i in range(1, len(energy)) if energy[i] < energy[i - 1]]
    assert len(drop) == 1 and energy[drop[0]] < 0.1 * energy[drop[0] - 1]


def test_malformed_fault_emits_every_kind_of_bad_input() -> None:
    bad = samples(["malformed@0s+60s=7"], seconds=60)["BAD"]
    # Ticks at 10..50 s, 7 per tick, one of each kind in turn (garbage and truncated JSON are
    # both malformed_json).
    assert len(bad) == 5 * 7
    assert Counter(b["reason"] for b in bad) == {"malformed_json": 10, "non_finite": 5, "wrong_type": 5,
                                                 "missing_field": 5, "oversize": 5, "absurd_value": 5}


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_prose() -> None:
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
