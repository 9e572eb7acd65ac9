"""The site combiner (streams/combine.py): a window is combined once every raw partition's
partial is in, in any arrival order with the same bits; redeliveries are ignored; every measure
follows from the partials' sums; roll-ups are sum over sum."""

from __future__ import annotations

import math
import random
from collections import Counter

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.contract import AnalyticsPoint
from dcpulse.producers.publisher import KeyPartitioner
from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.combine import SiteStage, SiteState, add_partial, decode_site_state, site_key
from dcpulse.streams.energy import WindowTotals
from dcpulse.streams.measures import Usage
from dcpulse.streams.state import OFFSET_KEY, PartitionState
from dcpulse.streams.windows import EnergyPart, SitePartial
from tests.unit.test_stage import MINUTE, SITE, T0, S, ToySite, batch, run_stages, sample, watermark

CFG = AnalyticsSettings()
PARTITIONS = 3


def combine(partials: list[SitePartial], state: SiteState | None = None) -> list[AnalyticsPoint]:
    state = state if state is not None else SiteState()
    points: list[AnalyticsPoint] = []
    for partial in partials:
        points += add_partial(state, partial, CFG)
    return points


def as_bytes(points: list[AnalyticsPoint]) -> dict[str, bytes]:
    return {p.key: p.to_bytes() for p in points}


def by_partition(partials: list[SitePartial]) -> dict[int, list[SitePartial]]:
    out: dict[int, list[SitePartial]] = {}
    for p in partials:
        out.setdefault(p.partition, []).append(p)
    return out


def interleave(queues: dict[int, list[SitePartial]], rng: random.Random) -> list[SitePartial]:
    """The partials in another arrival order: each partition's in its order (it sends them so),
    partitions interleaved at random."""
    pending = {p: list(reversed(q)) for p, q in queues.items()}
    out = []
    while pending:
        p = rng.choice(sorted(pending))
        out.append(pending[p].pop())
        if not pending[p]:
            del pending[p]
    return out


@pytest.fixture(scope="module")
def toy() -> tuple[ToySite, list[SitePartial]]:
    """Twenty minutes of the toy site over three partitions (agents by Kafka's partitioner)."""
    site = ToySite(racks=4)
    place = KeyPartitioner(PARTITIONS)
    outs = run_stages(site.records(120, place, PARTITIONS), PARTITIONS)
    assert len({place(k) for k in (f"{SITE}/{a}".encode() for a in site.agents())}) > 1  # really spread
    return site, [p for q in range(PARTITIONS) for p in outs[q].partials]


def window(points: list[AnalyticsPoint], start_ms: int, measurement: str, **tags: str) -> AnalyticsPoint:
    (found,) = [p for p in points if p.measurement == measurement and p.time.timestamp() * 1000 == start_ms
                and p.tags.get("window") == "1m" and all(p.tags.get(k) == v for k, v in tags.items())]
    return found


# ---- completeness, order, redelivery ---------------------------------------------------------------

def test_a_window_is_combined_only_when_all_partitions_partials_are_in(toy) -> None:
    _, partials = toy
    first = sorted({p.start_ms for p in partials})[0]
    of_first = sorted((p for p in partials if p.start_ms == first), key=lambda p: p.partition)
    assert [p.partition for p in of_first] == list(range(PARTITIONS))
    state = SiteState()
    for partial in of_first[:-1]:
        assert add_partial(state, partial, CFG) == []
    assert state.next_start_ms is None and set(state.pending) == {first}
    points = add_partial(state, of_first[-1], CFG)
    assert points and {p.time.timestamp() * 1000 for p in points} == {first}
    assert state.pending == {} and state.next_start_ms == first + MINUTE


def test_windows_are_combined_in_order_as_their_last_partials_arrive(toy) -> None:
    _, partials = toy
    starts = sorted({p.start_ms for p in partials})
    queues = by_partition([p for p in partials if p.start_ms in starts[:2]])
    state = SiteState()
    assert combine(queues[0] + queues[1] + queues[2][:1], state) != []  # partition 2 sent its first only
    assert state.next_start_ms == starts[1] and set(state.pending) == {starts[1]}
    points = combine(queues[2][1:], state)
    assert {p.time.timestamp() * 1000 for p in points} == {starts[1]}


def test_arrival_order_of_partials_does_not_change_a_bit(toy) -> None:
    _, partials = toy
    in_partition_order = as_bytes(combine(sorted(partials, key=lambda p: (p.start_ms, p.partition))))
    assert len(in_partition_order) > 50
    queues = by_partition(partials)
    for seed in range(5):
        assert as_bytes(combine(interleave(queues, random.Random(seed)))) == in_partition_order
    reversed_partitions = sorted(partials, key=lambda p: (p.start_ms, -p.partition))
    assert as_bytes(combine(reversed_partitions)) == in_partition_order


def test_partial_sums_are_added_in_partition_order_not_arrival_order() -> None:
    """Float addition is not associative: 1e16 + 1 - 1e16 depends on the order. The combiner's
    sums must not depend on the order the partials arrived in."""
    def part(partition: int, x: float) -> SitePartial:
        return SitePartial(SITE, T0, MINUTE, partition, 3, active=1,
                           energies={"facility": EnergyPart(x, 1, 1), "ups_out/h1": EnergyPart(1.0, 1, 1)},
                           compute_kwh=x, halls={"h1": Usage(power_kw=x, pdus=1)})

    parts = [part(0, 1e16), part(1, 1.0), part(2, -1e16)]
    orders = ([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1])
    results = [as_bytes(combine([parts[i] for i in order])) for order in orders]
    assert all(r == results[0] for r in results)
    assert window(combine(parts), T0, "utilisation", level="hall").fields["power_kw"] == (1e16 + 1.0) - 1e16


def test_redelivered_partials_are_ignored(toy) -> None:
    _, partials = toy
    ordered = sorted(partials, key=lambda p: (p.start_ms, p.partition))
    once = as_bytes(combine(ordered))
    state = SiteState()
    points: list[AnalyticsPoint] = []
    for i, partial in enumerate(ordered):
        points += add_partial(state, partial, CFG)
        points += add_partial(state, partial, CFG)  # straight away (still pending, or just combined)
        if i >= 5:
            points += add_partial(state, ordered[i - 5], CFG)  # a rewound worker sends old ones again
    assert as_bytes(points) == once and len(points) == len(once)


def test_a_redelivered_partial_with_other_numbers_does_not_replace_the_first() -> None:
    def part(partition: int, kwh: float) -> SitePartial:
        return SitePartial(SITE, T0, MINUTE, partition, 2, active=1,
                           energies={"facility": EnergyPart(kwh, 1, 1), "ups_out/h1": EnergyPart(1.0, 1, 1)})

    points = combine([part(0, 1.0), part(0, 5.0), part(1, 0.5)])
    assert window(points, T0, "pue", category="1").fields["facility_kwh"] == 1.5


def test_a_window_nobody_reported_in_gives_no_results() -> None:
    empty = [SitePartial(SITE, T0, MINUTE, p, 2) for p in range(2)]
    state = SiteState()
    assert combine(empty, state) == [] and state.next_start_ms == T0 + MINUTE


# ---- what the measures hold ---------------------------------------------------------------------------

def test_pue_ppue_efficiency_and_utilisation_follow_from_the_sites_powers(toy) -> None:
    site, partials = toy
    points = combine(sorted(partials, key=lambda p: (p.start_ms, p.partition)))
    start = T0 + 5 * MINUTE
    it = {"1": site.ups_out_kw, "2": site.racks * site.pdu_kw, "3": site.racks * site.server_w / 1000}
    for category, it_kw in it.items():
        fields = window(points, start, "pue", site=SITE, category=category).fields
        assert fields["pue"] == pytest.approx(site.facility_kw / it_kw, rel=1e-9)
        assert fields["it_kwh"] == pytest.approx(it_kw / 60, rel=1e-9)
        assert (fields["coverage"], fields["quality"]) == (1.0, "complete")
    assert window(points, start, "pue", category="2").fields["meters_expected"] == site.racks
    ppue = window(points, start, "ppue", site=SITE, hall="h1").fields
    zone_kw = site.ups_in_kw + site.cdu_kw + site.crah_kw
    assert ppue["ppue"] == pytest.approx(zone_kw / it["2"], rel=1e-9)
    assert ppue["infra_kwh"] == pytest.approx((zone_kw - it["2"]) / 60, rel=1e-9)
    eff = window(points, start, "site_efficiency", site=SITE).fields
    compute_kw = site.racks * (site.acc_w + site.cpu_w) / 1000
    assert eff["wue_l_per_kwh"] == pytest.approx(site.water_l_min / (it["1"] / 60), rel=1e-9)
    assert eff["itue"] == pytest.approx(it["3"] / compute_kw, rel=1e-9)
    assert eff["tue"] == pytest.approx(eff["itue"] * site.facility_kw / it["3"], rel=1e-9)
    hall = window(points, start, "utilisation", level="hall", entity="h1").fields
    whole = window(points, start, "utilisation", level="site", entity=SITE).fields
    assert hall == whole  # one hall
    assert hall["acc_util_mean"] == site.acc_util and hall["acc_samples"] == site.racks * MINUTE // site.dt_ms
    assert (hall["power_kw"], hall["provisioned_kw"]) == (it["2"], site.racks * site.rated_kw)


def test_the_first_window_is_published_flagged_not_as_whole(toy) -> None:
    _, partials = toy
    points = combine(sorted(partials, key=lambda p: (p.start_ms, p.partition)))
    fields = window(points, T0, "pue", category="1").fields
    assert fields["quality"] == "insufficient" and "pue" not in fields  # no facility energy yet


def test_a_meter_without_register_falls_back_to_integrated_power() -> None:
    """Facility meter with a power gauge only (120 kW), UPS output with a register (100 kW):
    category 1 PUE = 120 / 100, the facility energy integrated from the gauge."""
    records = []
    for i in range(16):  # 0..150 s: [T0, T0 + 1 min) and [T0 + 1 min, T0 + 2 min) close
        t = T0 + i * 10 * S
        records.append((0, t, *batch("facility", sample("fm", "facility_meter", i, t, {"power_kw": 120.0}))))
        records.append((0, t, *batch("hall-h1", sample("ups-h1", "ups", i, t, {
            "output_energy_kwh": 100.0 * 10 * i / 3600, "output_power_kw": 100.0}, hall="h1"))))
        records.append((0, t, *watermark(t + 9 * S)))
    points = combine(run_stages(records, 1)[0].partials)
    for start in (T0, T0 + MINUTE):
        fields = window(points, start, "pue", category="1").fields
        assert fields["facility_kwh"] == pytest.approx(2.0, rel=1e-12)  # 120 kW for 60 s
        assert fields["it_kwh"] == pytest.approx(100.0 / 60, rel=1e-12)
        assert fields["pue"] == pytest.approx(1.2, rel=1e-12) and fields["coverage"] == 1.0


def test_a_huge_but_finite_cdu_flow_does_not_break_the_combiner() -> None:
    """flow_l_min has no upper bound, so 1e306 l/min is a valid sample; the heat it implies
    overflows to inf, and a partial holding inf is written by orjson as null. The combiner must
    still take the partial (a partial the raw stage wrote from valid input must never stop the
    combine agent) and every result must be a finite number or absent."""
    records = []
    for i in range(16):
        t = T0 + i * 10 * S
        records.append((0, t, *batch("hall-h1", sample("cdu-1", "cdu", i, t, {
            "supply_c": 30.0, "return_c": 40.0, "flow_l_min": 1e306, "capacity_kw": 500.0}, hall="h1"),
            sample("pdu-1", "pdu", i, t, {"power_kw": 10.0, "energy_kwh": 10.0 * 10 * i / 3600}, hall="h1"))))
        records.append((0, t, *watermark(t + 9 * S)))
    partials = run_stages(records, 1)[0].partials
    stage = SiteStage(0, PartitionState(0, 4, decode_site_state), CFG)
    points: list[AnalyticsPoint] = []
    for offset, partial in enumerate(partials):
        stage.handle(points, Counter(), offset, orjson.dumps(partial.to_json()))
    assert points
    for p in points:
        for name, value in p.fields.items():
            assert isinstance(value, str) or math.isfinite(value), (p.measurement, name, value)


# ---- roll-ups ----------------------------------------------------------------------------------------

def minute(i: int, facility: float, it: float, active: int = 1, partitions: int = 1) -> list[SitePartial]:
    """Minute i (from T0, an hour boundary) of a site with one facility meter and one UPS output."""
    first = SitePartial(SITE, T0 + i * MINUTE, MINUTE, 0, partitions, active=active,
                        energies={"facility": EnergyPart(facility, 1, 1), "ups_out/h1": EnergyPart(it, 1, 1)})
    return [first] + [SitePartial(SITE, T0 + i * MINUTE, MINUTE, p, partitions) for p in range(1, partitions)]


def rolled(points: list[AnalyticsPoint], label: str) -> list[AnalyticsPoint]:
    return sorted((p for p in points if p.measurement == "pue" and p.tags["window"] == label), key=lambda p: p.time)


@pytest.mark.parametrize("label, minutes", [("15m", 15), ("1h", 60)])
def test_rollups_are_sum_over_sum_of_their_minutes(label: str, minutes: int) -> None:
    assert T0 % 3_600_000 == 0
    energies = [(1.0 + (i % 7) * 0.3, 0.5 + (i % 5) * 0.2) for i in range(60)]
    partials = [p for i, (f, it) in enumerate(energies) for p in minute(i, f, it, partitions=2)]
    points = combine(partials)
    rolls = rolled(points, label)
    assert len(rolls) == 60 // minutes
    for n, roll in enumerate(rolls):
        inside = energies[n * minutes:(n + 1) * minutes]
        assert roll.time.timestamp() * 1000 == T0 + n * minutes * MINUTE
        assert roll.fields["facility_kwh"] == math.fsum(f for f, _ in inside)
        assert roll.fields["it_kwh"] == math.fsum(it for _, it in inside)
        assert roll.fields["pue"] == roll.fields["facility_kwh"] / roll.fields["it_kwh"]
        mean_of_ratios = sum(f / it for f, it in inside) / len(inside)
        assert roll.fields["pue"] != pytest.approx(mean_of_ratios, rel=1e-6)  # the inputs tell them apart
        assert (roll.fields["coverage"], roll.fields["quality"]) == (1.0, "complete")


def test_a_rollup_with_a_silent_minute_is_flagged_partial() -> None:
    partials = [p for i in range(15) for p in (minute(i, 1.2, 1.0) if i != 7 else minute(i, 0, 0, active=0))]
    (roll,) = rolled(combine(partials), "15m")
    assert roll.fields["coverage"] == pytest.approx(14 / 15) and roll.fields["quality"] == "partial"
    assert roll.fields["facility_kwh"] == pytest.approx(14 * 1.2)


def test_a_rollup_is_published_even_when_its_last_minute_is_silent() -> None:
    """Fourteen minutes of data, then the site goes quiet for the quarter's last minute: the
    quarter's roll-up is still due (flagged by its coverage), like one with a hole anywhere else."""
    partials = [p for i in range(16) for p in (minute(i, 1.2, 1.0) if i != 14 else minute(i, 0, 0, active=0))]
    rolls = rolled(combine(partials), "15m")
    assert [r.time.timestamp() * 1000 for r in rolls] == [T0]
    assert rolls[0].fields["coverage"] == pytest.approx(14 / 15)


# ---- state encoding and the combine stage ------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
names = st.text("abch1/_", min_size=1, max_size=6)
usages = st.builds(Usage, st.dictionaries(st.integers(0, 1000), st.integers(1, 10**6), max_size=4), finite,
                   st.integers(0, 10**6), finite, finite, st.integers(0, 100), finite, finite, st.integers(0, 100))
partials = st.builds(SitePartial, names, st.integers(0, 2**50), st.sampled_from([60_000, 600_000]),
                     st.integers(0, 63), st.integers(1, 64), st.integers(0, 10**6),
                     st.dictionaries(names, st.builds(EnergyPart, finite, st.integers(0, 99), st.integers(0, 99)),
                                     max_size=4),
                     finite, st.dictionaries(names, usages, max_size=3))


@given(partials)
def test_a_site_partial_round_trips_through_json(partial: SitePartial) -> None:
    assert SitePartial.from_json(orjson.loads(orjson.dumps(partial.to_json()))) == partial


@given(st.dictionaries(st.integers(0, 2**50), st.lists(partials, max_size=3), max_size=3),
       st.none() | st.integers(0, 2**50),
       st.dictionaries(names, st.lists(st.builds(WindowTotals, st.integers(0, 2**50),
                                                 st.dictionaries(names, finite, max_size=3), finite), max_size=3),
                       max_size=3))
def test_site_state_round_trips_through_json(pending, next_start, history) -> None:
    state = SiteState({start: {p.partition: p for p in parts} for start, parts in pending.items()}, next_start, history)
    assert SiteState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


def test_a_combiner_restored_from_its_json_carries_on_exactly(toy) -> None:
    _, parts = toy
    ordered = interleave(by_partition(parts), random.Random(1))
    steady = as_bytes(combine(ordered))
    state = SiteState()
    points = combine(ordered[:47], state)  # mid-window: some partials pending
    assert state.pending
    restored = SiteState.from_json(orjson.loads(orjson.dumps(state.to_json())))
    points += combine(ordered[47:], restored)
    assert as_bytes(points) == steady


def test_the_combine_stage_guards_offsets_and_keeps_sites_apart(toy) -> None:
    _, parts = toy
    ordered = sorted(parts, key=lambda p: (p.start_ms, p.partition))
    state = PartitionState(1, 8, decode_site_state)
    stage = SiteStage(1, state, CFG)
    counts: Counter[str] = Counter()
    points: list[AnalyticsPoint] = []
    other = SitePartial("other", T0, MINUTE, 0, 1, active=1, energies={"facility": EnergyPart(1.0, 1, 1)})
    stage.handle(points, counts, 0, orjson.dumps(other.to_json()))
    for offset, partial in enumerate(ordered, start=1):
        stage.handle(points, counts, offset, orjson.dumps(partial.to_json()))
    assert as_bytes([p for p in points if p.tags["site"] == SITE]) == as_bytes(combine(ordered))
    assert state[OFFSET_KEY] == len(ordered) and {site_key(SITE), site_key("other")} <= set(state)
    before = len(points)
    stage.handle(points, counts, 3, orjson.dumps(ordered[2].to_json()))  # redelivered offset
    assert len(points) == before and counts["redelivered"] == 1
    assert counts["partials"] == len(ordered) + 1 and counts["site_results"] == len(points)


def test_an_unreadable_partial_is_counted_and_skipped() -> None:
    state = PartitionState(0, 4, decode_site_state)
    stage = SiteStage(0, state, CFG)
    counts: Counter[str] = Counter()
    for offset, value in enumerate([b"{not json", b'{"site": "s1"}', None]):
        stage.handle([], counts, offset, value)
    assert counts == {"unreadable_partials": 3} and state[OFFSET_KEY] == 2


def test_the_combine_stage_restored_from_a_checkpoint_carries_on_exactly_and_stores_windows_apart(toy) -> None:
    _, parts = toy
    ordered = interleave(by_partition(parts), random.Random(2))
    steady = as_bytes(combine(ordered))
    state = PartitionState(0, 8, decode_site_state)
    points: list[AnalyticsPoint] = []
    stage = SiteStage(0, state, CFG)
    for offset, partial in enumerate(ordered[:47]):
        stage.handle(points, Counter(), offset, orjson.dumps(partial.to_json()))
    assert stage.sites[SITE].pending
    table = dict(state.dirty_buckets())
    # Every open window is a value of its own; the site's own value holds no partials.
    assert sorted(int(k.split("/")[-1]) for k in state if k.startswith("pending/")) == sorted(stage.sites[SITE].pending)
    assert state[site_key(SITE)].pending == {}
    restored = PartitionState(0, 8, decode_site_state)
    restored.load(table)
    stage = SiteStage(0, restored, CFG)
    for offset, partial in enumerate(ordered[47:], start=47):
        stage.handle(points, Counter(), offset, orjson.dumps(partial.to_json()))
    assert as_bytes(points) == steady
    assert not [k for k in restored if k.startswith("pending/")] or stage.sites[SITE].pending
