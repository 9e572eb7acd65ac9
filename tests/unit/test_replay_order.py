"""What a replay sends: partitions merged by time, watermarks broadcast once to every partition,
v1 records converted to v2 batches with synthesised watermarks, pacing and timestamp shifting."""

from collections import defaultdict
from datetime import UTC, datetime

import orjson
import pytest

from dcpulse.contract import TELEMETRY_V1_SCHEMA, Sample, TelemetryBatch, Watermark, agent_key, watermark_key
from dcpulse.producers.publisher import InMemoryTopic, KeyPartitioner
from dcpulse.producers.recording import RecordedMessage
from dcpulse.producers.replay_order import (
    PlannedSend,
    due_offset_s,
    merge_by_timestamp,
    pacing_schedule,
    parse_speed,
    plan_sends,
    shift_delta_ms,
    shift_timestamps,
)
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator

TIMESTAMPS = [10_000, 10_000, 10_500, 12_000, 11_000, 30_000]


def test_pacing_at_speed_1_follows_recorded_gaps() -> None:
    # 11_000 after 12_000 (clock skew): sent at once after it, never "back in time".
    assert pacing_schedule(TIMESTAMPS, 1.0) == [0.0, 0.0, 0.5, 2.0, 2.0, 20.0]


def test_pacing_at_speed_10_divides_gaps() -> None:
    assert pacing_schedule(TIMESTAMPS, 10.0) == pytest.approx([0.0, 0.0, 0.05, 0.2, 0.2, 2.0])


def test_pacing_never_goes_backwards() -> None:
    schedule = pacing_schedule([5_000, 9_000, 1_000, 4_000, 9_500, -1, 9_000], 1.0)
    assert schedule == [0.0, 4.0, 4.0, 4.0, 4.5, 4.5, 4.5]
    assert schedule == sorted(schedule)


def test_pacing_at_max_sends_everything_at_once() -> None:
    assert pacing_schedule(TIMESTAMPS, None) == [0.0] * len(TIMESTAMPS)
    assert due_offset_s(99_000, 10_000, None) == 0.0


def test_pacing_edge_cases() -> None:
    # Older than the first (another partition lagging): due now, never negative.
    assert due_offset_s(9_000, 10_000, 1.0) == 0.0
    # Unknown timestamps (-1) follow the record before them; the base is the first known one.
    assert pacing_schedule([-1, 5_000, -1, 6_000], 2.0) == [0.0, 0.0, 0.0, 0.5]
    assert pacing_schedule([5_000, 7_000, -1, 6_000], 1.0) == [0.0, 2.0, 2.0, 2.0]
    assert pacing_schedule([], 1.0) == []
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="speed"):
            due_offset_s(1, 0, bad)


def rec(partition: int, offset: int, ts: int, topic: str = "t") -> RecordedMessage:
    return RecordedMessage(topic=topic, partition=partition, offset=offset, timestamp_ms=ts,
                           key=b"p%d" % partition, value=b"%d/%d" % (partition, offset))


def where(messages: list[RecordedMessage]) -> list[tuple[str, int, int]]:
    return [(m.topic, m.partition, m.offset) for m in messages]


def from_beginning_file(*partitions: list[int]) -> list[RecordedMessage]:
    """File order of a recording made --from-beginning: one partition's batch after another."""
    return [rec(p, offset, ts) for p, stamps in enumerate(partitions)
            for offset, ts in enumerate(stamps)]


def test_merge_keeps_each_partitions_order() -> None:
    file_order = from_beginning_file([0, 300, 600, 900], [100, 400, 700], [200, 500, 800, 1100])
    merged = merge_by_timestamp(file_order)
    assert sorted(where(merged)) == sorted(where(file_order))  # nothing lost or duplicated
    for partition in range(3):
        offsets = [m.offset for m in merged if m.partition == partition]
        assert offsets == sorted(offsets)


def test_merge_interleaves_partitions_by_time() -> None:
    file_order = from_beginning_file([0, 300, 600, 900], [100, 400, 700], [200, 500, 800, 1100])
    merged = merge_by_timestamp(file_order)
    assert [m.timestamp_ms for m in merged] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1100]
    # The bug this fixes: paced in file order, partitions 1 and 2 would be overdue after
    # partition 0's 0.9 s and go out together; merged, the sends spread over the whole span.
    assert pacing_schedule([m.timestamp_ms for m in file_order], 1.0)[4:] == [0.9] * 6 + [1.1]
    assert pacing_schedule([m.timestamp_ms for m in merged], 1.0) == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1])


def test_merge_interleaves_topics_too() -> None:
    file_order = [rec(0, 0, 10, "a"), rec(0, 1, 30, "a"), rec(0, 0, 20, "b"), rec(0, 1, 40, "b")]
    assert where(merge_by_timestamp(file_order)) == [("a", 0, 0), ("b", 0, 0), ("a", 0, 1),
                                                     ("b", 0, 1)]


def test_merge_handles_timestamps_going_backwards_inside_a_partition() -> None:
    # Partition 0's producer clock jumped back: 50 after 100. It must still follow 100.
    file_order = from_beginning_file([100, 50, 200], [60, 150])
    merged = merge_by_timestamp(file_order)
    assert [(m.partition, m.timestamp_ms) for m in merged] == [
        (1, 60), (0, 100), (0, 50), (1, 150), (0, 200)]
    # The late record goes out right after its predecessor, without waiting backwards.
    assert pacing_schedule([m.timestamp_ms for m in merged], 1.0) == pytest.approx(
        [0.0, 0.04, 0.04, 0.09, 0.14])


def test_merge_breaks_ties_by_file_position() -> None:
    file_order = from_beginning_file([5, 5, 7], [5, 7], [3, 5])
    merged = merge_by_timestamp(file_order)
    assert where(merged) == [("t", 2, 0), ("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 2, 1),
                             ("t", 0, 2), ("t", 1, 1)]
    # Deterministic: the same file always gives the same order, whatever the dict/heap history.
    assert all(where(merge_by_timestamp(list(file_order))) == where(merged) for _ in range(5))
    # Fully equal timestamps keep file order exactly.
    same = from_beginning_file([1, 1], [1, 1], [1])
    assert where(merge_by_timestamp(same)) == where(same)


def test_merge_records_without_timestamp_follow_their_predecessor() -> None:
    file_order = from_beginning_file([10, -1, 40], [20, 30])
    assert [(m.partition, m.timestamp_ms) for m in merge_by_timestamp(file_order)] == [
        (0, 10), (0, -1), (1, 20), (1, 30), (0, 40)]


def test_merge_edge_cases() -> None:
    assert merge_by_timestamp([]) == []
    single = from_beginning_file([3, 1, 2])
    assert merge_by_timestamp(single) == single  # one partition: its order, untouched
    assert merge_by_timestamp(iter(single)) == single  # any iterable, read once


@pytest.mark.parametrize("text, speed", [("1", 1.0), ("10", 10.0), ("2.5", 2.5), ("10x", 10.0),
                                         ("max", None), ("MAX", None)])
def test_parse_speed(text: str, speed: float | None) -> None:
    assert parse_speed(text) == speed


@pytest.mark.parametrize("text", ["0", "-1", "fast", "", "inf"])
def test_parse_speed_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def test_shifting_keeps_gaps_and_starts_at_now() -> None:
    now = 1_800_000_000_000
    shifted = shift_timestamps(TIMESTAMPS, now)
    assert shifted[0] == now
    assert [b - a for a, b in zip(shifted, shifted[1:])] == [
        b - a for a, b in zip(TIMESTAMPS, TIMESTAMPS[1:])]
    assert shifted == [ts + shift_delta_ms(TIMESTAMPS[0], now) for ts in TIMESTAMPS]


def test_shifting_leaves_unknown_timestamps_alone() -> None:
    assert shift_timestamps([-1, 1_000, 1_250], 5_000) == [-1, 5_000, 5_250]
    assert shift_timestamps([-1, -1], 5_000) == [-1, -1]



def test_merge_puts_watermarks_after_the_records_of_their_timestamp() -> None:
    # Recorded from the beginning: partition 0's watermark copy comes before partition 1's batch
    # of the same tick in the file; it must not overtake it.
    mark = watermark_key("s").encode()
    file_order = [RecordedMessage("t", 0, 0, 10, b"s/a", b"a@10"), RecordedMessage("t", 0, 1, 10, mark, b"w@10"),
                  RecordedMessage("t", 1, 0, 10, b"s/b", b"b@10"), RecordedMessage("t", 1, 1, 10, mark, b"w@10")]
    assert [m.value for m in merge_by_timestamp(file_order)] == [b"a@10", b"b@10", b"w@10", b"w@10"]


def recorded(records: list[tuple[int, int | None, bytes | None, bytes | None]], topic: str = "raw",
             ) -> list[RecordedMessage]:
    """A recording made --from-beginning of a topic holding `records` (send order): one
    partition after another, offsets per partition."""
    by_partition: dict[int, list[RecordedMessage]] = defaultdict(list)
    for partition, ts, key, value in records:
        queue = by_partition[partition]
        queue.append(RecordedMessage(topic, partition, len(queue), -1 if ts is None else ts, key, value))
    return [m for p in sorted(by_partition) for m in by_partition[p]]


def per_partition(sends: list[PlannedSend] | list[tuple]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for s in sends:
        partition, ts, key, value = (s.partition, s.timestamp_ms, s.key, s.value) if isinstance(s, PlannedSend) else s
        out[partition].append((ts, key, value))
    return dict(out)


def simulated(presets: list[str], seconds: float, partitions: int = 12) -> InMemoryTopic:
    sim = ScenarioSimulator(build_scenario(presets, None, [], 7, None))
    topic = InMemoryTopic(partitions)
    run_scenario(sim, seconds, None, topic.publish_raw, topic.broadcast)
    return topic


def test_replay_into_the_same_partitions_reproduces_every_partition() -> None:
    live = simulated(["small", "pengcheng"], 60)
    plan = plan_sends(recorded(live.records), {"raw": 12})
    assert per_partition(plan.sends) == per_partition(live.records)
    assert plan.watermarks == 2 * 6 and plan.copies_skipped == 2 * 6 * 11 and plan.converted == 0


def test_replay_into_fewer_partitions_gives_each_watermark_once_to_every_partition() -> None:
    live = simulated(["small", "pengcheng"], 60)
    plan = plan_sends(recorded(live.records), {"raw": 5})
    partitioner = KeyPartitioner(5)
    sequences = per_partition(plan.sends)
    assert sorted(sequences) == list(range(5))
    for partition, records in sequences.items():
        marks = [(ts, key) for ts, key, _ in records if key.endswith(b"/~watermark")]
        assert len(marks) == len(set(marks)) == 12  # 2 sites x 6 ticks, once each
        for ts, key, value in records:
            if not key.endswith(b"/~watermark"):
                assert partitioner(key) == partition
        # Nothing after a site's watermark is stamped before it: the promise still holds.
        for i, (_, key, value) in enumerate(records):
            if key.endswith(b"/~watermark"):
                mark = Watermark.model_validate_json(value)
                later = [s for _, k, v in records[i + 1:] if k.startswith(f"{mark.site}/rack".encode())
                         for s in TelemetryBatch.model_validate_json(v).samples]
                assert all(s.ts >= mark.ts for s in later)
    # Per key, the order of the live topic.
    def by_key(records: list[tuple]) -> dict[bytes, list[bytes]]:
        out: dict[bytes, list[bytes]] = defaultdict(list)
        for _, _, key, value in records:
            if not key.endswith(b"/~watermark"):
                out[key].append(value)
        return out

    assert by_key([(s.partition, s.timestamp_ms, s.key, s.value) for s in plan.sends]) == by_key(live.records)


def v1(site: str, device: str, ts_ms: int, **fields: object) -> bytes:
    ts = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"schema": TELEMETRY_V1_SCHEMA, "site": site, "device": device, "seq": 0, "ts": ts,
                         "metrics": {"power_kw": 1.5}, **fields})


T0 = 1_782_864_010_000


def test_v1_records_become_one_sample_batches_keyed_by_their_agent() -> None:
    records = [
        (0, T0, b"s", v1("s", "pdu-h1-r01-k01", T0 + 120, kind="pdu", hall="h1", row="h1-r01", rack="h1-r01-k01")),
        (0, T0, b"s", v1("s", "ups-h1", T0 + 340, kind="ups", hall="h1")),
        (0, T0, b"s", v1("s", "facility-meter", T0 + 560, kind="facility_meter")),
    ]
    plan = plan_sends(recorded(records), {"raw": 4})
    assert plan.converted == 3 and plan.watermarks == 0
    batches = [TelemetryBatch.model_validate_json(s.value) for s in plan.sends]
    assert [b.agent for b in batches] == ["rack-h1-r01-k01", "hall-h1", "facility"]
    assert [s.key for s in plan.sends] == [agent_key("s", b.agent).encode() for b in batches]
    assert [s.partition for s in plan.sends] == [KeyPartitioner(4)(s.key) for s in plan.sends]
    original = orjson.loads(records[0][3])
    assert batches[0].samples == [Sample.model_validate({k: v for k, v in original.items()
                                                         if k not in ("schema", "site")})]
    assert all(s.timestamp_ms == T0 for s in plan.sends)


def test_v1_ticks_get_a_watermark_broadcast_before_them() -> None:
    records = [(0, T0 + 10_000 * tick, b"s", v1("s", f"d{i}", T0 + 10_000 * tick + 100 * i, kind="pump"))
               for tick in range(3) for i in range(2)]
    records.insert(3, (1, T0 + 10_000, b"other", v1("other", "d0", T0 + 10_000, kind="pump")))
    plan = plan_sends(recorded(records), {"raw": 3})
    shape = [(s.key, s.partition, s.timestamp_ms) for s in plan.sends]
    mark_s, mark_other = watermark_key("s").encode(), watermark_key("other").encode()
    batch_s = agent_key("s", "facility").encode()
    batch_other = agent_key("other", "facility").encode()
    p_s, p_other = KeyPartitioner(3)(batch_s), KeyPartitioner(3)(batch_other)
    assert shape == [
        (batch_s, p_s, T0), (batch_s, p_s, T0),
        (mark_s, 0, T0 + 10_000), (mark_s, 1, T0 + 10_000), (mark_s, 2, T0 + 10_000),
        (batch_s, p_s, T0 + 10_000), (batch_s, p_s, T0 + 10_000),
        (batch_other, p_other, T0 + 10_000),  # its site's first record: no watermark yet
        (mark_s, 0, T0 + 20_000), (mark_s, 1, T0 + 20_000), (mark_s, 2, T0 + 20_000),
        (batch_s, p_s, T0 + 20_000), (batch_s, p_s, T0 + 20_000),
    ]
    marks = [Watermark.model_validate_json(s.value) for s in plan.sends if s.key == mark_s]
    assert {(m.site, m.producer, m.ts.timestamp() * 1000) for m in marks} == {
        ("s", "replay", T0 + 9_000), ("s", "replay", T0 + 19_000)}
    assert plan.watermarks == 2 and plan.converted == 7


def test_records_that_are_not_v1_telemetry_pass_through_unchanged() -> None:
    v2 = TelemetryBatch(site="s", agent="facility", samples=[Sample(device="d", kind="pump", seq=0,
                                                                    ts=datetime.now(UTC), metrics={"x": 1.0})])
    untouched = [
        (2, T0, b"s", b"\x00\xffnot json at all"),
        (2, T0, b"s", v1("s", "d", T0).replace(b'"power_kw":1.5', b'"power_kw":NaN')),  # not JSON
        (2, T0, b"s", orjson.dumps({"site": "s", "device": "d"})),  # no v1 schema id
        (2, T0, v2.key.encode(), v2.to_bytes()),
        (2, T0, None, b"no key: stays on its partition number"),
        (2, T0, b"s", None),
    ]
    plan = plan_sends(recorded(untouched), {"raw": 2})
    assert plan.converted == 0 and plan.watermarks == 0
    assert [(s.key, s.value) for s in plan.sends] == [(k, v) for _, _, k, v in untouched]
    assert plan.sends[4].partition == 2 % 2


def test_a_bad_v1_sample_is_converted_and_stays_bad_alone() -> None:
    plan = plan_sends(recorded([(0, T0, b"s", v1("s", "d", T0, kind="pump", seq="seven"))]), {"raw": 1})
    batch = orjson.loads(plan.sends[0].value)
    assert batch["samples"][0]["seq"] == "seven" and batch["agent"] == "facility"
