import math

import orjson
import pytest

from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.stage import PartitionStage
from dcpulse.streams.state import PartitionState, bucket_key
from tests.unit.test_validation import event, us


def test_only_changed_buckets_are_written_once_each() -> None:
    state = PartitionState(3, buckets=8)
    assert state.dirty_buckets() == []
    for i in range(100):
        state[f"k{i}"] = [i, 0.1 * i]
    first = dict(state.dirty_buckets())
    assert set(first) == {bucket_key(3, b) for b in range(8)}  # 100 keys touch every bucket
    assert sum(len(orjson.loads(v)) for v in first.values()) == 100
    assert state.dirty_buckets() == []  # clean after a flush
    state["k7"] = "changed"
    state["k7"] = "changed again"  # twice in a batch: still one write
    (key, raw), = state.dirty_buckets()
    assert key in first and orjson.loads(raw)["k7"] == "changed again"
    assert orjson.loads(raw).keys() == orjson.loads(first[key]).keys()  # the whole bucket


def test_state_round_trips_through_its_buckets_and_deletes_reach_the_changelog() -> None:
    state = PartitionState(0, buckets=4)
    values = {"a": {"x": [1.0, 2.5e-17], "n": None}, "b": 0.1 + 0.2, "c": [[1.5, math.pi]], "d": "s"}
    state.update(values)
    table = dict(state.dirty_buckets())
    del state["d"]
    table.update(state.dirty_buckets())  # the emptied or shrunk bucket is rewritten
    restored = PartitionState(0, buckets=4)
    assert restored.load(table) == len(table)
    assert dict(restored) == {k: v for k, v in values.items() if k != "d"}  # floats bit-exact
    assert restored.dirty_buckets() == []
    assert PartitionState(1, buckets=4).load(table) == 0  # another partition's entries are not ours
    with pytest.raises(ValueError):
        PartitionState(0, buckets=0)


def test_stage_guards_offsets_and_rejects_records_keyed_other_than_by_site() -> None:
    state: dict = {}
    stage = PartitionStage("raw:0", 0, state, ValidationSettings(), AnalyticsSettings())
    good = event(0, 0).to_bytes()
    assert stage.handle(10, us(0), b"hengqin", good).outcome.site == "hengqin"  # type: ignore[union-attr]
    assert stage.handle(10, us(0), b"hengqin", good).outcome is None  # redelivered offset: skipped
    wrong = stage.handle(11, us(0.1), b"hengqin/pdu-1", event(1, 10).to_bytes()).outcome
    assert wrong.reason == "wrong_key" and "site" in wrong.detail  # type: ignore[union-attr]
    assert stage.handle(12, us(0.2), None, event(1, 10).to_bytes()).outcome.reason == "wrong_key"  # type: ignore[union-attr]
    assert state["__partition__/0/offset"] == 12


def test_a_record_the_stage_fails_on_is_rejected_and_the_stage_goes_on(monkeypatch) -> None:
    state: dict = {}
    stage = PartitionStage("raw:0", 0, state, ValidationSettings(), AnalyticsSettings())

    def broken(src, event):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(stage.engine, "process", broken)
    verdict = stage.handle(5, us(0), b"hengqin", event(0, 0).to_bytes())
    assert verdict.outcome.reason == "stage_error" and "ZeroDivisionError" in verdict.outcome.detail  # type: ignore[union-attr]
    assert stage.handle(5, us(0), b"hengqin", event(0, 0).to_bytes()).outcome is None  # handled once
    monkeypatch.undo()
    assert stage.handle(6, us(0.1), b"hengqin", event(1, 10).to_bytes()).outcome.seq == 1  # type: ignore[union-attr]
