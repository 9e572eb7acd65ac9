"""The offline reference (streams/offline.py) on simulated data, without Kafka: determinism under
any interleaving of partitions, agreement with the simulator's ground truth and with a replay's
plan, plausible results, roll-ups."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from dcpulse.contract import AnalyticsPoint
from dcpulse.producers.publisher import KeyPartitioner
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.streams.offline import Record, reference_results

START = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


def simulate(presets: list[str], seconds: float, partitions: int,
             faults: list[str] | None = None) -> tuple[ScenarioSimulator, list[Record]]:
    """What the simulator publishes, as the raw topic's partitions would hold it: each batch at its
    key's partition (Kafka's default partitioner), each tick's watermark on every partition.
    (partition, Kafka timestamp ms, key, value), in publish order."""
    sim = ScenarioSimulator(build_scenario(presets, None, faults or [], 7, START))
    place = KeyPartitioner(partitions)
    records: list[Record] = []

    def send(key: bytes, value: bytes, ts_ms: int) -> None:
        records.append((place(key), ts_ms, key, value))

    def broadcast(key: bytes, value: bytes, ts_ms: int) -> None:
        records.extend((p, ts_ms, key, value) for p in range(partitions))

    run_scenario(sim, seconds, None, send, broadcast)
    return sim, records


def interleave(records: list[Record], rng: random.Random) -> list[Record]:
    """Another arrival order of the same records: each partition's own order kept, partitions
    interleaved at random (what consumers of different partitions may see)."""
    queues: dict[int, list[Record]] = {}
    for record in records:
        queues.setdefault(record[0], []).append(record)
    for queue in queues.values():
        queue.reverse()
    out = []
    while queues:
        partition = rng.choice(sorted(queues))
        out.append(queues[partition].pop())
        if not queues[partition]:
            del queues[partition]
    return out


def select(results: dict[str, AnalyticsPoint], measurement: str, **tags: str) -> list[AnalyticsPoint]:
    return sorted((p for p in results.values() if p.measurement == measurement
                   and all(p.tags.get(k) == v for k, v in tags.items())), key=lambda p: p.time)


PARTITIONS = 6


@pytest.fixture(scope="module")
def two_sites():
    sim, records = simulate(["small", "pengcheng"], 20 * 60, PARTITIONS)
    return sim, records, reference_results(records, PARTITIONS)


@pytest.fixture(scope="module")
def small():
    sim, records = simulate(["small"], 65 * 60, 3)
    return sim, records, reference_results(records, 3)


def test_the_plan_spreads_a_site_over_partitions_and_gives_every_partition_every_watermark(two_sites) -> None:
    _, records, _ = two_sites
    watermarks = [r for r in records if r[2] is not None and r[2].endswith(b"/~watermark")]
    batches = [r for r in records if r[2] is not None and not r[2].endswith(b"/~watermark")]
    per_partition = {p: [r[3] for r in watermarks if r[0] == p] for p in range(PARTITIONS)}
    assert all(marks == per_partition[0] for marks in per_partition.values()) and per_partition[0]
    assert len({r[0] for r in batches if r[2].startswith(b"small/")}) > 1  # one site, several partitions


def test_any_interleaving_of_partitions_gives_identical_results(two_sites) -> None:
    _, records, in_publish_order = two_sites
    assert len(in_publish_order) > 100
    one_partition_after_the_other = reference_results(sorted(records, key=lambda r: r[0]), PARTITIONS)  # stable
    assert one_partition_after_the_other == in_publish_order
    shuffled = interleave(records, random.Random(7))
    assert shuffled != records
    results = reference_results(shuffled, PARTITIONS)
    assert {k: p.to_bytes() for k, p in results.items()} == {k: p.to_bytes() for k, p in in_publish_order.items()}


def test_the_same_scenario_gives_identical_results_again() -> None:
    _, first = simulate(["small"], 5 * 60, 4)
    _, second = simulate(["small"], 5 * 60, 4)
    assert first == second
    assert reference_results(first, 4) == reference_results(second, 4)


@pytest.mark.parametrize("partitions", [1, 2, 12])
def test_every_partition_count_gives_the_same_windows_and_plausible_pue(partitions: int, small) -> None:
    """Sums are combined per partition, so bits may differ between partition counts; which
    results exist, and their values to rounding, may not."""
    _, records, three = small
    _, other = simulate(["small"], 65 * 60, partitions)
    results = reference_results(other, partitions)
    assert set(results) == set(three)
    for key, point in results.items():
        for name, value in point.fields.items():
            if isinstance(value, float):
                assert value == pytest.approx(three[key].fields[name], rel=1e-9, abs=1e-12), (key, name)
            else:
                assert value == three[key].fields[name], (key, name)


def test_small_pue_is_plausible_and_agrees_with_the_simulators_ground_truth(small) -> None:
    sim, _, results = small
    minutes = [p for p in select(results, "pue", site="small", category="1", window="1m")
               if p.fields["quality"] == "complete"]
    assert len(minutes) >= 60
    for p in minutes:
        assert 1.05 <= p.fields["pue"] <= 1.2, p
    windowed = sum(p.fields["facility_kwh"] for p in minutes) / sum(p.fields["it_kwh"] for p in minutes)
    assert windowed == pytest.approx(sim.sites[0].truth.pue, rel=0.01)


def test_pue_rises_with_the_category(two_sites) -> None:
    # IT at the UPS output > at PDU outputs > at server inputs, so PUE rises with the category.
    sim, _, results = two_sites
    for site in sim.sites:
        name = site.site.name
        by_cat = {c: {p.time: p.fields.get("pue") for p in select(results, "pue", site=name, category=c, window="1m")
                      if p.fields["quality"] == "complete"} for c in "123"}
        common = set(by_cat["1"]) & set(by_cat["2"]) & set(by_cat["3"])
        assert len(common) >= 15
        for t in common:
            assert by_cat["1"][t] < by_cat["2"][t] < by_cat["3"][t]


def test_the_first_window_is_flagged_not_complete(small) -> None:
    first = select(small[2], "pue", site="small", category="1", window="1m")[0]
    assert first.time == START and first.fields["quality"] != "complete"  # meters started mid-window


def test_rollups_are_sum_over_sum_of_their_minutes(small) -> None:
    _, _, results = small
    for label, length in (("15m", 15), ("1h", 60)):
        (rolled, *more) = select(results, "pue", site="small", category="2", window=label)
        assert rolled.time == START and (label == "1h" or len(more) == 3)
        minutes = [p for p in select(results, "pue", site="small", category="2", window="1m")
                   if rolled.time <= p.time < rolled.time + timedelta(minutes=length)]
        assert len(minutes) == length
        facility = sum(m.fields["facility_kwh"] for m in minutes)
        it = sum(m.fields["it_kwh"] for m in minutes)
        assert rolled.fields["facility_kwh"] == pytest.approx(facility, rel=1e-12)
        assert rolled.fields["pue"] == pytest.approx(facility / it, rel=1e-12)
        assert rolled.fields["coverage"] == pytest.approx(sum(m.fields["coverage"] for m in minutes) / length)


def test_ppue_and_site_efficiency_get_rollups_too(small) -> None:
    _, _, results = small
    assert len(select(results, "ppue", site="small", hall="h1", window="1h")) == 1
    assert len(select(results, "site_efficiency", site="small", window="15m")) == 4


def test_utilisation_efficiency_and_ppue_are_produced(two_sites) -> None:
    _, _, results = two_sites
    racks = select(results, "utilisation", site="small", level="rack")
    assert {p.tags["entity"] for p in racks} == {"h1-r01-k01", "h1-r01-k02", "h1-r02-k01", "h1-r02-k02"}
    for p in racks:
        assert 0 <= p.fields["acc_util_mean"] <= p.fields["acc_util_p95"] <= p.fields["acc_util_max"] <= 1
        assert 0 < p.fields["power_ratio"] < 1.5 and p.fields["provisioned_kw"] == 50.0
    hall = select(results, "utilisation", site="small", level="hall")[3]
    assert 0 < hall.fields["heat_ratio"] < 1
    site = select(results, "utilisation", site="small", level="site")[3]
    assert site.fields["power_kw"] == pytest.approx(hall.fields["power_kw"])  # one hall
    eff = select(results, "site_efficiency", site="small", window="1m")[3]
    assert eff.fields["wue_l_per_kwh"] > 0 and eff.fields["itue"] > 1 and eff.fields["tue"] > eff.fields["itue"]
    ppue = select(results, "ppue", site="small", window="1m")[3]
    assert 1.0 < ppue.fields["ppue"] < 1.2
    assert ppue.fields["infra_kwh"] == pytest.approx(ppue.fields["it_kwh"] * (ppue.fields["ppue"] - 1))


def test_the_offline_reference_equals_the_replay_plan_of_a_recording() -> None:
    """`recording.replay_plan` is what harnesses feed the reference: a recording of a one-partition
    topic replayed into N partitions gives each partition the records the simulator's publisher
    would have put there (watermarks broadcast), so the same results."""
    recording = pytest.importorskip("dcpulse.producers.recording")
    if not hasattr(recording, "replay_plan"):
        pytest.skip("no replay_plan yet")
    _, direct = simulate(["small"], 5 * 60, 4)
    _, single = simulate(["small"], 5 * 60, 1)
    recorded = []
    for offset, (_, ts, key, value) in enumerate(single):
        recorded.append(recording.RecordedMessage("raw", 0, offset, ts, key, value))
    plan = recording.replay_plan(recorded, 4)

    def per_partition(records):
        return {p: [r for r in records if r[0] == p] for p in range(4)}

    assert per_partition(plan) == per_partition(direct)
    assert reference_results(plan, 4) == reference_results(direct, 4)
