"""A partition's state in buckets (streams/state.py): only changed buckets are written, the
state round-trips through them bit-exactly, and a stage restored from them carries on exactly as
one that never stopped (a worker killed and restarted)."""

import math
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.combine import SiteStage, decode_site_state, site_key
from dcpulse.streams.eventtime import SiteClock
from dcpulse.streams.stage import Outputs, PartitionStage, decode_state, new_state
from dcpulse.streams.state import OFFSET_KEY, PartitionState, bucket_key, marker_key
from dcpulse.streams.windows import DeviceState, Gauges
from tests.unit.test_stage import ToySite, make_stage


def plain(partition: int = 0, buckets: int = 8) -> PartitionState:
    return PartitionState(partition, buckets, lambda key, value: value)


def test_only_changed_buckets_are_written_once_each() -> None:
    state = plain(3)
    assert state.dirty_buckets() == []
    for i in range(100):
        state[f"k{i}"] = [i, 0.1 * i]
    first = dict(state.dirty_buckets())
    # 100 keys touch every bucket; each goes to its first slot, stamped checkpoint 1; the marker last.
    assert list(first)[-1] == marker_key(3) and first.pop(marker_key(3)) == b"1"
    assert set(first) == {bucket_key(3, b, 0) for b in range(8)}
    assert all(v.startswith(b"1 ") for v in first.values())
    assert sum(len(orjson.loads(v[2:])) for v in first.values()) == 100
    assert state.dirty_buckets() == []  # clean after a flush
    state["k7"] = "changed"
    state["k7"] = "changed again"  # twice in a batch: still one write
    (key, raw), marker = state.dirty_buckets()
    assert marker == (marker_key(3), b"2")
    assert key[:-1] + b"0" in first and key.endswith(b"/1")  # the other slot
    assert raw.startswith(b"2 ") and orjson.loads(raw[2:])["k7"] == "changed again"
    assert orjson.loads(raw[2:]).keys() == orjson.loads(first[key[:-1] + b"0"][2:]).keys()  # the whole bucket


def test_a_half_written_checkpoint_is_invisible_and_the_one_before_it_survives() -> None:
    """A worker killed while checkpoint 2's writes were in flight: some of its buckets reached
    the changelog, its marker did not. Loading gives checkpoint 1 exactly, and the next
    checkpoint overwrites the half-written slots, not the committed ones."""
    state = plain(0, 4)
    state.update({f"k{i}": i for i in range(20)})
    table = dict(state.dirty_buckets())  # checkpoint 1, complete
    state.update({f"k{i}": -i for i in range(20)})
    *buckets, marker = state.dirty_buckets()  # checkpoint 2 ...
    table.update(buckets[:2])  # ... of which two buckets landed, and no marker
    restored = plain(0, 4)
    restored.load(table)
    assert dict(restored) == {f"k{i}": i for i in range(20)}
    restored["k0"] = 100
    *rewrites, marker = restored.dirty_buckets()
    assert marker == (marker_key(0), b"2") and all(value.startswith(b"2 ") for _, value in rewrites)
    # The half-written slots are rewritten (even if nothing in them changed), in the same slots.
    assert {key for key, _ in buckets[:2]} <= {key for key, _ in rewrites}
    assert all(key.endswith(b"/1") for key, _ in rewrites)  # the slots checkpoint 1 did not use
    table.update([*rewrites, marker])
    again = plain(0, 4)
    again.load(table)
    assert dict(again) == {**{f"k{i}": i for i in range(20)}, "k0": 100}


def test_state_round_trips_through_its_buckets_and_deletes_reach_the_changelog() -> None:
    state = plain(0, 4)
    values = {"a": {"x": [1.0, 2.5e-17], "n": None}, "b": 0.1 + 0.2, "c": [[1.5, math.pi]], "d": "s"}
    state.update(values)
    table = dict(state.dirty_buckets())
    del state["d"]
    table.update(state.dirty_buckets())  # the emptied or shrunk bucket is rewritten
    restored = plain(0, 4)
    assert restored.load(table) == 3  # buckets used (one holds "d" alone, then nothing)
    assert dict(restored) == {k: v for k, v in values.items() if k != "d"}  # floats bit-exact
    assert restored.dirty_buckets() == []  # loading is not a change
    assert plain(1, 4).load(table) == 0  # another partition's entries are not ours
    with pytest.raises(ValueError):
        plain(0, 0)


def test_an_emptied_bucket_is_written_as_an_empty_object() -> None:
    state = plain(0, 1)
    state["only"] = 1
    state.dirty_buckets()
    del state["only"]
    assert state.dirty_buckets() == [(bucket_key(0, 0, 1), b"2 {}"), (marker_key(0), b"2")]


def test_typed_values_are_stored_as_json_and_decoded_by_their_key() -> None:
    state = new_state(2, 4)
    device = DeviceState("pdu", "h1", "h1-k1", 3, 1_000, {"energy_kwh": [(0, 1.5), (10_000, 1.75)]}, {},
                         {0: Gauges({"kw": 85.0}, {"kw": 2}, {}, {"rated_kw": 50.0})})
    state["device/s1/pdu-h1-k1"] = device
    state["clock/s1"] = SiteClock(9_000, 8_000, 0)
    state["devices/s1"] = ["pdu-h1-k1"]
    state[OFFSET_KEY] = 12
    restored = new_state(2, 4)
    restored.load(dict(state.dirty_buckets()))
    assert dict(restored) == dict(state)
    assert isinstance(restored["device/s1/pdu-h1-k1"], DeviceState)
    assert isinstance(restored["clock/s1"], SiteClock)


finite = st.floats(allow_nan=False, allow_infinity=False)
gauges = st.builds(Gauges, st.dictionaries(st.sampled_from(["kw", "acc_w", "cpu_w", "cpu_util"]), finite),
                   st.dictionaries(st.sampled_from(["kw", "acc_w"]), st.integers(0, 100)),
                   st.dictionaries(st.integers(0, 1000), st.integers(1, 100)),
                   st.dictionaries(st.sampled_from(["rated_kw", "capacity_kw"]), finite))
series = st.lists(st.tuples(st.integers(-2**50, 2**50), finite), max_size=5)
devices = st.builds(DeviceState, st.sampled_from(["pdu", "server", "ups"]), st.none() | st.just("h1"),
                    st.none() | st.just("h1-k1"), st.integers(-1, 2**62), st.integers(-2**50, 2**50),
                    st.dictionaries(st.sampled_from(["energy_kwh", "input_energy_kwh"]), series),
                    st.dictionaries(st.just("energy_kwh"), series),
                    st.dictionaries(st.integers(0, 2**50), gauges, max_size=3))


@given(devices)
def test_device_state_round_trips_bit_exactly(device: DeviceState) -> None:
    state = new_state(0, 2)
    state["device/s/d"] = device
    restored = new_state(0, 2)
    restored.load(dict(state.dirty_buckets()))
    assert restored["device/s/d"] == device


def _outputs(out: Outputs) -> Any:
    """What a stage produced, comparable (dead letters without their rejection time)."""
    return ([(k, v) for k, v in out.valid], [(d.reason, d.sample_index, d.source_offset) for _, d in out.dead],
            [p.to_bytes() for p in out.results], [orjson.dumps(p.to_json()) for p in out.partials])


@pytest.mark.parametrize("checkpoint_after, committed", [(0, 0), (37, 20), (80, 80), (119, 60)])
def test_a_stage_restored_from_its_checkpoint_carries_on_exactly(checkpoint_after: int, committed: int) -> None:
    """A worker checkpoints its state after record `checkpoint_after` and is killed; Kafka had
    committed only up to `committed`. The restarted stage loads the checkpoint and is handed the
    records again from `committed + 1`: those its state has seen are skipped, the rest give the
    same outputs, bit for bit, as a stage that never stopped."""
    records = ToySite().records(40, lambda key: 0, 1)  # 40 ticks: 4 batches + 1 watermark each
    assert len(records) == 200
    steady = make_stage()
    expected = []
    for offset, (_, ts, key, value) in enumerate(records):
        out = Outputs()
        steady.handle(out, offset, ts, key, value)
        expected.append(_outputs(out))

    first = make_stage()
    for offset, (_, ts, key, value) in enumerate(records[:checkpoint_after + 1]):
        first.handle(Outputs(), offset, ts, key, value)
    table = dict(first.state.dirty_buckets())

    restored_state = new_state(0, first.state.buckets)
    restored_state.load(table)
    restarted = PartitionStage("raw", 0, 1, restored_state, ValidationSettings(), AnalyticsSettings())
    for offset in range(committed + 1, len(records)):
        _, ts, key, value = records[offset]
        out = Outputs()
        restarted.handle(out, offset, ts, key, value)
        if offset <= checkpoint_after:
            assert out.counts == {"redelivered": 1}
        else:
            assert _outputs(out) == expected[offset], offset
    assert dict(restarted.state) == dict(steady.state)


def test_the_combiners_state_decodes_by_key() -> None:
    state = PartitionState(0, 4, decode_site_state)
    stage = SiteStage(0, state, AnalyticsSettings())
    stage.handle([], Counter(), 0, orjson.dumps(
        {"schema": "dcpulse.partial/1", "site": "s1", "start_ms": 0, "window_ms": 60_000, "partition": 0,
         "partitions": 2, "active": 0, "energies": {}, "compute_kwh": 0.0, "halls": {}}))
    restored = PartitionState(0, 4, decode_site_state)
    restored.load(dict(state.dirty_buckets()))
    assert restored[site_key("s1")] == state[site_key("s1")] and restored[OFFSET_KEY] == 0
    assert decode_state("offset", 5) == 5 and decode_state("devices/s1", ["a"]) == ["a"]
