"""The simulator end to end without Kafka: batches per agent, watermarks on every partition,
determinism, agent-level faults."""

from collections import Counter, defaultdict
from datetime import datetime

import orjson
import pytest
from pydantic import ValidationError

from dcpulse.contract import (
    MAX_MESSAGE_BYTES,
    MAX_SAMPLES,
    BatchEnvelope,
    Sample,
    TelemetryBatch,
    Watermark,
    agent_key,
    watermark_key,
)
from dcpulse.producers.agents import agent_for, watermark_ms
from dcpulse.producers.publisher import InMemoryTopic
from dcpulse.producers.run import RunStats, parse_duration, run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.producers.sitemodel import preset_names

PARTITIONS = 12
SMALL_DEVICES = 16 + 4 + 1 + 2 + 2 + 2 + 6  # servers, PDUs, UPS, CDUs, leak sensors, CRAHs, site plant
SMALL_AGENTS = ["facility", "hall-h1", "rack-h1-r01-k01", "rack-h1-r01-k02", "rack-h1-r02-k01", "rack-h1-r02-k02"]


def digest(presets: list[str], seed: int, seconds: float = 120, faults: tuple[str, ...] = ()) -> str:
    sim = ScenarioSimulator(build_scenario(presets, None, list(faults), seed, None))
    return run_scenario(sim, seconds, None, lambda k, v, t: None, lambda k, v, t: None).digest


def publish(faults: list[str], seconds: float = 300,
            presets: tuple[str, ...] = ("small",)) -> tuple[InMemoryTopic, RunStats]:
    sim = ScenarioSimulator(build_scenario(list(presets), None, faults, 7, None))
    topic = InMemoryTopic(PARTITIONS)
    return topic, run_scenario(sim, seconds, None, topic.publish_raw, topic.broadcast)


def batches(topic: InMemoryTopic) -> list[TelemetryBatch]:
    """Every record that is a valid batch, in send order."""
    out = []
    for _, _, key, value in topic.records:
        if not key.endswith(b"/~watermark"):
            out.append(TelemetryBatch.model_validate_json(value))
    return out


def by_device(topic: InMemoryTopic) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for batch in batches(topic):
        for sample in batch.samples:
            out[sample.device].append(sample)
    return out


def test_same_seed_same_stream_different_seed_different_stream() -> None:
    first = digest(["small"], 7, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))
    assert first == digest(["small"], 7, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))
    assert first != digest(["small"], 8, faults=("cdu_pump_failure@30s+60s", "malformed@10s+30s"))


def test_several_sites_in_one_stream_are_deterministic_too() -> None:
    assert digest(["small", "pengcheng"], 3, seconds=30) == digest(["small", "pengcheng"], 3, seconds=30)


def test_one_batch_per_agent_and_tick_keyed_by_the_agent() -> None:
    topic, stats = publish([], seconds=60)
    ticks = 6
    sent = batches(topic)
    assert stats.messages == len(sent) == ticks * len(SMALL_AGENTS)
    assert stats.samples == sum(len(b.samples) for b in sent) == ticks * SMALL_DEVICES
    assert Counter(b.agent for b in sent) == {agent: ticks for agent in SMALL_AGENTS}
    partition_of: dict[str, set[int]] = defaultdict(set)
    for partition, _, key, value in topic.records:
        if not key.endswith(b"/~watermark"):
            batch = TelemetryBatch.model_validate_json(value)
            assert key == agent_key("small", batch.agent).encode()
            partition_of[batch.agent].add(partition)
            # Each sample's agent follows from its location; a rack's PDU comes first.
            assert {agent_for(s.hall, s.rack) for s in batch.samples} == {batch.agent}
    assert all(len(p) == 1 for p in partition_of.values())  # an agent's batches stay in order
    rack = next(b for b in sent if b.agent == "rack-h1-r01-k01")
    assert [s.device for s in rack.samples] == ["pdu-h1-r01-k01"] + [f"h1-r01-k01-s0{i}" for i in range(1, 5)]
    hall = next(b for b in sent if b.agent == "hall-h1")
    assert [s.device for s in hall.samples] == ["ups-h1", "cdu-h1-01", "leak-cdu-h1-01", "cdu-h1-02",
                                                "leak-cdu-h1-02", "crah-h1-01", "crah-h1-02"]


def test_every_tick_ends_with_its_watermark_on_every_partition() -> None:
    topic, stats = publish([], seconds=60)
    assert stats.watermarks == 6
    tick_ms: list[int] = []
    seen_samples = 0
    for position, (partition, timestamp, key, value) in enumerate(topic.records):
        if key != watermark_key("small").encode():
            continue
        mark = Watermark.model_validate_json(value)
        if partition == 0:
            tick_ms.append(timestamp)
            copies = topic.records[position:position + PARTITIONS]
            assert [p for p, *_ in copies] == list(range(PARTITIONS))
            assert {(t, v) for _, t, _, v in copies} == {(timestamp, value)}
            assert mark.site == "small" and mark.producer == "simulate"
            assert mark.ts.timestamp() * 1000 == watermark_ms(timestamp, 10.0) == timestamp + 9000
            # Everything before it is that tick or older; nothing after it is stamped before it.
            assert all(t <= timestamp for _, t, *_ in topic.records[:position])
            later = [s.ts for _, _, k, v in topic.records[position + PARTITIONS:]
                     if not k.endswith(b"/~watermark") for s in TelemetryBatch.model_validate_json(v).samples]
            assert all(ts >= mark.ts for ts in later)
            seen_samples += len(later)
    assert seen_samples > 0
    assert tick_ms == [tick_ms[0] + 10_000 * i for i in range(6)]


def test_every_sample_honours_the_contract_and_keeps_per_device_order() -> None:
    devices = by_device(publish([])[0])
    assert len(devices) == SMALL_DEVICES
    kinds = {samples[0].kind.value for samples in devices.values()}
    assert {"facility_meter", "ups", "pdu", "server", "cdu", "leak_sensor", "crah", "chiller", "cooling_tower",
            "pump", "water_meter", "weather"} <= kinds
    for device, samples in devices.items():
        assert [s.seq for s in samples] == list(range(len(samples))), device
        times = [s.ts for s in samples]
        assert times == sorted(times), device
    server = devices["h1-r01-k01-s01"][-1].metrics
    assert {"power_w", "energy_kwh", "inlet_c", "acc0_power_w", "acc7_util", "acc3_temp_c", "acc0_throttle"} <= set(server)


def test_energy_registers_are_cumulative_and_consistent_with_power() -> None:
    meter = by_device(publish([], seconds=600)[0])["facility-meter"]
    energies = [s.metrics["energy_kwh"] for s in meter]
    assert energies == sorted(energies) and energies[-1] > 0
    mean_kw = sum(s.metrics["power_kw"] for s in meter) / len(meter)
    assert energies[-1] == pytest.approx(mean_kw * 600 / 3600, rel=0.02)


def test_pump_failure_shows_in_the_published_cdu_and_server_data() -> None:
    data = by_device(publish(["cdu_pump_failure@60s+600s"], seconds=300)[0])
    flows = [s.metrics["flow_l_min"] for s in data["cdu-h1-01"]]
    returns = [s.metrics["return_c"] for s in data["cdu-h1-01"]]
    assert min(flows[8:]) < 0.5 * flows[3]
    assert max(returns[8:]) > returns[3] + 5
    assert data["cdu-h1-01"][-1].metrics["pumps_running"] == 1.0
    assert data["cdu-h1-02"][-1].metrics["pumps_running"] == 2.0


def test_agent_faults_dropout_stuck_skew_reset() -> None:
    target = "h1-r01-k01-s02"
    healthy = by_device(publish([], seconds=300)[0])
    topic, stats = publish([f"sensor_dropout:small:{target}@60s+60s",
                            "stuck_sensor:small:h1-r02-k01-s01@60s+120s",
                            "clock_skew:small:h1-r01-k02-s01@0s+300s=120",
                            "counter_reset:small:pdu-h1-r01-k01@150s"], seconds=300)
    data = by_device(topic)
    assert len(data[target]) == len(healthy[target]) - 6  # one minute of 10 s samples missing
    assert stats.samples == 30 * SMALL_DEVICES - 6
    stuck = [s.metrics["inlet_c"] for s in data["h1-r02-k01-s01"][5:17]]  # t = 60 s .. 170 s
    assert len(set(stuck)) == 1
    skew = data["h1-r01-k02-s01"][0].ts - healthy["h1-r01-k02-s01"][0].ts
    assert 119 < skew.total_seconds() < 121
    energy = [s.metrics["energy_kwh"] for s in data["pdu-h1-r01-k01"]]
    drop = [i for i in range(1, len(energy)) if energy[i] < energy[i - 1]]
    assert len(drop) == 1 and energy[drop[0]] < 0.1 * energy[drop[0] - 1]


def test_a_batch_whose_devices_all_drop_out_is_not_sent() -> None:
    rack = "h1-r01-k01"
    devices = [f"pdu-{rack}"] + [f"{rack}-s0{i}" for i in range(1, 5)]
    topic, stats = publish([f"sensor_dropout:small:{d}@20s+20s" for d in devices], seconds=60)
    agents = Counter(b.agent for b in batches(topic))
    assert agents[f"rack-{rack}"] == 6 - 2  # ticks at 20 s and 30 s
    assert agents["facility"] == 6
    assert stats.messages == 6 * len(SMALL_AGENTS) - 2
    assert stats.samples == 6 * SMALL_DEVICES - 2 * len(devices)


def test_malformed_fault_sends_bad_records_and_good_batches_with_one_bad_sample() -> None:
    topic, stats = publish(["malformed@0s+60s=9"], seconds=60)
    whole, one_bad = [], []
    for _, _, key, value in topic.records:
        if key.endswith(b"/~watermark"):
            continue
        try:
            envelope = BatchEnvelope.model_validate_json(value)  # NaN is the one thing it lets through
            orjson.loads(value)
        except (ValidationError, orjson.JSONDecodeError):
            whole.append(value)
            continue
        if len(value) > MAX_MESSAGE_BYTES:
            whole.append(value)
            continue
        bad = []
        for sample in envelope.samples:
            try:
                if Sample.model_validate(sample).metrics.get("power_kw") == -1.0e9:  # absurd, for the stage
                    bad.append(sample)
            except ValidationError:
                bad.append(sample)
        if bad:
            one_bad.append((envelope.agent, bad))
    # Ticks at 10..50 s, 9 per tick: 5 not-a-batch records, 4 bad samples in good batches.
    assert len(whole) == 5 * 5
    assert sum(v == b"\x00\xffnot json at all" for v in whole) == 5
    assert sum(b"NaN" in v for v in whole) == 5
    assert sum(len(v) > MAX_MESSAGE_BYTES for v in whole) == 5
    assert len(one_bad) == 5 * 4 and all(len(bad) == 1 for _, bad in one_bad)
    assert [agent for agent, _ in one_bad[:4]] == SMALL_AGENTS[:4]  # a different good batch each
    assert stats.messages == 5 * (len(SMALL_AGENTS) + 5) + len(SMALL_AGENTS)  # the tick at 60 s is past the fault
    assert stats.samples == 6 * SMALL_DEVICES  # only device samples count


@pytest.mark.parametrize("preset", preset_names())
def test_every_presets_batches_fit_the_contract_limits(preset: str) -> None:
    topic, _ = publish([], seconds=10, presets=(preset,))
    for _, _, key, value in topic.records:
        assert len(value) < MAX_MESSAGE_BYTES // 2, key
        if not key.endswith(b"/~watermark"):
            assert len(orjson.loads(value)["samples"]) <= MAX_SAMPLES


def test_watermark_rule() -> None:
    tick = int(datetime(2026, 7, 1).timestamp() * 1000)
    assert watermark_ms(tick, 10.0) == tick + 9_000
    assert watermark_ms(tick, 60.0) == tick + 59_000


def test_agent_for() -> None:
    assert agent_for("h1", "h1-r01-k01") == "rack-h1-r01-k01"
    assert agent_for("h1", None) == "hall-h1"
    assert agent_for(None, None) == "facility"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_prose() -> None:
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
