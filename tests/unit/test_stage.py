"""The per-partition stage (streams/stage.py) without Kafka: per-sample dead letters, valid
output, duplicates, the offset guard, stage errors, late samples, bounded dead letters; and the
Faust worker's wiring that needs no broker (streams/app.py).

The builders here (a toy site whose meters run at constant powers, batches, watermarks) are
shared by the other stream tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

import dcpulse.streams.stage as stage_module
from dcpulse.contract import DEADLETTER_ORIGINAL_BYTES, MAX_MESSAGE_BYTES, TELEMETRY_SCHEMA
from dcpulse.deadletter import Rejection, dead_letter
from dcpulse.settings import AnalyticsSettings, Settings, ValidationSettings
from dcpulse.streams.stage import Outputs, PartitionStage, clock_key, device_key, devices_key, held_key, new_state
from dcpulse.streams.state import OFFSET_KEY
from dcpulse.streams.validation import epoch_ms, iso_ms, parse_record

T0 = epoch_ms(datetime(2026, 7, 1, 10, 0, tzinfo=UTC))  # a window start (minute-aligned)
S = 1000
MINUTE = 60 * S
SITE = "s1"
KAFKA_LIMIT = 1024 * 1024  # the broker's default message.max.bytes: a dead letter must fit it

Record = tuple[int, int | None, bytes | None, bytes | None]  # (partition, Kafka timestamp ms, key, value)


# ---- builders ---------------------------------------------------------------------------------

def sample(device: str, kind: str, seq: int, ts_ms: int, metrics: dict[str, float], **location: str) -> dict:
    return {"device": device, "kind": kind, **location, "seq": seq, "ts": iso_ms(ts_ms), "metrics": metrics}


def batch(agent: str, *samples: dict, site: str = SITE) -> tuple[bytes, bytes]:
    """(key, value) of an agent's batch."""
    value = orjson.dumps({"schema": TELEMETRY_SCHEMA, "site": site, "agent": agent, "samples": list(samples)})
    return f"{site}/{agent}".encode(), value


def watermark(ts_ms: int, site: str = SITE) -> tuple[bytes, bytes]:
    value = orjson.dumps({"schema": "dcpulse.watermark/1", "site": site, "producer": "test", "ts": iso_ms(ts_ms)})
    return f"{site}/~watermark".encode(), value


def make_stage(partition: int = 0, partitions: int = 1, analytics: AnalyticsSettings | None = None,
               validation: ValidationSettings | None = None, buckets: int = 16) -> PartitionStage:
    analytics = analytics or AnalyticsSettings()
    return PartitionStage("raw", partition, partitions, new_state(partition, buckets),
                          validation or ValidationSettings(), analytics)


@dataclass
class ToySite:
    """A site whose meters run at constant powers (kW), so every expected result follows from
    these numbers: registers rise linearly, so window energies are power x time."""

    site: str = SITE
    racks: int = 2
    facility_kw: float = 120.0
    ups_out_kw: float = 100.0
    ups_in_kw: float = 104.0
    pdu_kw: float = 45.0  # per rack
    server_w: float = 40_000.0  # per rack (one server each)
    acc_w: float = 700.0
    cpu_w: float = 500.0
    acc_util: float = 0.6
    cpu_util: float = 0.5
    rated_kw: float = 50.0
    cdu_kw: float = 2.0
    crah_kw: float = 3.0
    water_l_min: float = 30.0
    cdu_flow_l_min: float = 600.0
    cdu_dt_c: float = 10.0
    cdu_capacity_kw: float = 500.0
    dt_ms: int = 10 * S
    phase_ms: int = 100
    seq: dict[str, int] = field(default_factory=dict)

    def agents(self) -> list[str]:
        return ["facility", "hall-h1", *(f"rack-h1-k{i}" for i in range(1, self.racks + 1))]

    def _s(self, device: str, kind: str, t_ms: int, metrics: dict[str, float], **location: str) -> dict:
        seq = self.seq.get(device, 0)
        self.seq[device] = seq + 1
        return sample(device, kind, seq, t_ms, metrics, **location)

    @staticmethod
    def kwh(kw: float, t_ms: int) -> float:
        return kw * (t_ms - T0 + 3_600_000) / 3_600_000  # an hour's worth at T0: no reset in sight

    def tick(self, t_ms: int) -> list[tuple[bytes, bytes]]:
        """Every agent's batch of the tick at t_ms (samples stamped t_ms + phase)."""
        ts = t_ms + self.phase_ms
        facility = batch("facility",
                         self._s("facility-meter", "facility_meter", ts,
                                 {"power_kw": self.facility_kw, "energy_kwh": self.kwh(self.facility_kw, ts)}),
                         self._s("water-meter", "water_meter", ts,
                                 {"flow_l_min": self.water_l_min, "volume_l": self.water_l_min * (ts - T0) / MINUTE}),
                         site=self.site)
        hall = batch("hall-h1",
                     self._s("ups-h1", "ups", ts, {"output_power_kw": self.ups_out_kw,
                                                   "output_energy_kwh": self.kwh(self.ups_out_kw, ts),
                                                   "input_power_kw": self.ups_in_kw,
                                                   "input_energy_kwh": self.kwh(self.ups_in_kw, ts)}, hall="h1"),
                     self._s("cdu-h1-01", "cdu", ts, {"supply_c": 30.0, "return_c": 30.0 + self.cdu_dt_c,
                                                      "flow_l_min": self.cdu_flow_l_min,
                                                      "capacity_kw": self.cdu_capacity_kw, "power_kw": self.cdu_kw,
                                                      "energy_kwh": self.kwh(self.cdu_kw, ts)}, hall="h1"),
                     self._s("crah-h1-01", "crah", ts, {"fan_power_kw": self.crah_kw,
                                                        "energy_kwh": self.kwh(self.crah_kw, ts)}, hall="h1"),
                     site=self.site)
        out = [facility, hall]
        for i in range(1, self.racks + 1):
            rack = f"h1-k{i}"
            loc = {"hall": "h1", "rack": rack}
            out.append(batch(
                f"rack-{rack}",
                self._s(f"pdu-{rack}", "pdu", ts, {"power_kw": self.pdu_kw, "energy_kwh": self.kwh(self.pdu_kw, ts),
                                                   "rated_kw": self.rated_kw}, **loc),
                self._s(f"{rack}-s1", "server", ts, {"power_w": self.server_w,
                                                     "energy_kwh": self.kwh(self.server_w / 1000, ts),
                                                     "cpu_util": self.cpu_util, "cpu_power_w": self.cpu_w,
                                                     "acc0_util": self.acc_util, "acc0_power_w": self.acc_w}, **loc),
                site=self.site))
        return out

    def records(self, ticks: int, place: Callable[[bytes], int], partitions: int,
                first_tick_ms: int | None = None) -> list[Record]:
        """`ticks` ticks from T0 + dt: each tick's batches (to `place(key)`), then a watermark
        (tick + dt - 1 s) to every partition, as the producers do. Kafka timestamp: the tick."""
        out: list[Record] = []
        t = first_tick_ms if first_tick_ms is not None else T0 + self.dt_ms
        for _ in range(ticks):
            for key, value in self.tick(t):
                out.append((place(key), t, key, value))
            wkey, wvalue = watermark(t + self.dt_ms - S, self.site)
            out.extend((p, t, wkey, wvalue) for p in range(partitions))
            t += self.dt_ms
        return out


def run_stages(records: Iterable[Record], partitions: int, analytics: AnalyticsSettings | None = None,
               validation: ValidationSettings | None = None) -> dict[int, Outputs]:
    """Each partition's records through its own stage (offsets from 0): the outputs per partition."""
    stages: dict[int, PartitionStage] = {}
    outs: dict[int, Outputs] = {}
    offsets: dict[int, int] = {}
    for partition, ts_ms, key, value in records:
        if partition not in stages:
            stages[partition] = make_stage(partition, partitions, analytics, validation)
            outs[partition] = Outputs()
        offsets[partition] = offsets.get(partition, -1) + 1
        stages[partition].handle(outs[partition], offsets[partition], ts_ms, key, value)
    return outs


def handle(stage: PartitionStage, offset: int, record: tuple[bytes, bytes], producer_ms: int | None = None) -> Outputs:
    """One record through the stage; without a Kafka timestamp unless given (no skew bound)."""
    out = Outputs()
    stage.handle(out, offset, producer_ms, *record)
    return out


def pdu(seq: int, ts_ms: int, power_kw: float = 42.5, device: str = "pdu-h1-k1") -> dict:
    return sample(device, "pdu", seq, ts_ms, {"power_kw": power_kw, "energy_kwh": 10.0 + seq}, hall="h1", rack="h1-k1")


# ---- valid output and per-sample dead letters ---------------------------------------------------

def test_an_all_good_batch_is_forwarded_with_its_original_bytes() -> None:
    record = batch("rack-h1-k1", pdu(0, T0), pdu(0, T0, device="pdu-h1-k2"))
    out = handle(make_stage(), 0, record)
    assert out.valid == [record]  # the same key and the very same bytes
    assert out.dead == [] and out.counts == {"samples_valid": 2, "batches": 1}


def test_a_bad_sample_is_dead_lettered_alone_and_a_replacement_carries_its_siblings() -> None:
    good0, good2 = pdu(0, T0), pdu(0, T0, device="pdu-h1-k2")
    bad = pdu(0, T0, power_kw=-5.0, device="pdu-h1-k3")
    key, value = batch("rack-h1-k1", good0, bad, good2)
    stage = make_stage(partition=4, partitions=6)
    out = handle(stage, 17, (key, value))

    (letter_key, letter), = out.dead
    assert letter_key == key
    assert (letter.reason, letter.stage, letter.sample_index) == ("absurd_value", "validate", 1)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("raw", 4, 17)
    assert orjson.loads(base64.b64decode(letter.original_value_b64)) == bad  # the sample's JSON
    assert base64.b64decode(letter.original_key_b64 or "") == key
    assert not letter.original_truncated and letter.original_size == len(base64.b64decode(letter.original_value_b64))

    (valid_key, replacement), = out.valid
    assert valid_key == key and replacement != value
    assert orjson.loads(replacement) == {"schema": TELEMETRY_SCHEMA, "site": SITE, "agent": "rack-h1-k1",
                                         "samples": [good0, good2]}
    reparsed = parse_record(replacement, key)  # the replacement is itself a good batch
    assert [s.device for s in reparsed.samples] == ["pdu-h1-k1", "pdu-h1-k2"]  # type: ignore[union-attr]
    assert out.counts == {"samples_valid": 2, "batches": 1, "absurd_value": 1}


def test_a_nan_sample_is_dead_lettered_alone_with_its_nan_and_its_sibling_forwarded() -> None:
    key, value = batch("rack-h1-k1", pdu(0, T0), pdu(0, T0, device="pdu-h1-k2"))
    value = value.replace(b"42.5", b"NaN", 1)
    out = Outputs()
    make_stage().handle(out, 4, T0, key, value)
    (_, letter), = out.dead
    assert (letter.reason, letter.sample_index) == ("non_finite", 0)
    assert b'"power_kw":NaN' in base64.b64decode(letter.original_value_b64)  # as the sensor sent it
    (_, forwarded), = out.valid
    assert [s["device"] for s in orjson.loads(forwarded)["samples"]] == ["pdu-h1-k2"]


def test_a_batch_whose_samples_are_all_bad_has_no_valid_output() -> None:
    bad = [pdu(0, T0, power_kw=-1.0), {"device": "x"}]
    out = handle(make_stage(), 3, batch("rack-h1-k1", *bad))
    assert out.valid == []
    assert [(d.reason, d.sample_index) for _, d in out.dead] == [("absurd_value", 0), ("missing_field", 1)]
    assert [orjson.loads(base64.b64decode(d.original_value_b64)) for _, d in out.dead] == bad


@pytest.mark.parametrize(
    "key, value, reason",
    [(b"s1/rack-h1-k1", b"{not json", "malformed_json"), (b"s1/rack-h1-k1", None, "malformed_json"),
     (b"s1", batch("rack-h1-k1", pdu(0, T0))[1], "wrong_key")],
)
def test_a_record_that_is_not_a_batch_is_dead_lettered_whole(key: bytes, value: bytes | None, reason: str) -> None:
    out = Outputs()
    make_stage(partition=2).handle(out, 9, T0, key, value)
    (letter_key, letter), = out.dead
    assert (letter_key, letter.reason, letter.sample_index) == (key, reason, None)
    assert (letter.source_partition, letter.source_offset) == (2, 9)
    assert base64.b64decode(letter.original_value_b64) == (value or b"")
    assert out.valid == [] and out.counts == {reason: 1}


# ---- duplicates, restarts, the offset guard ---------------------------------------------------

def test_the_same_samples_again_at_a_new_offset_are_duplicates() -> None:
    stage = make_stage()
    record = batch("rack-h1-k1", pdu(0, T0), pdu(1, T0 + 10 * S))
    assert handle(stage, 0, record).valid == [record]
    again = handle(stage, 1, record)  # a producer retry: new offset, same samples
    assert again.valid == []
    assert [(d.reason, d.sample_index) for _, d in again.dead] == [("duplicate", 0), ("duplicate", 1)]


def test_a_duplicate_inside_one_batch_is_rejected_and_its_sibling_forwarded() -> None:
    out = handle(make_stage(), 0, batch("rack-h1-k1", pdu(0, T0), pdu(0, T0)))
    assert [(d.reason, d.sample_index) for _, d in out.dead] == [("duplicate", 1)]
    assert orjson.loads(out.valid[0][1])["samples"] == [pdu(0, T0)]


@pytest.mark.parametrize(
    "seq, dt_s, duplicate",
    [(10, 0, True), (9, -10, True), (10, -1, True), (9, 0, True),  # not newer in both
     (11, 10, False), (11, -5, False),  # newer seq, clock went back a little
     (0, 10, False), (10, 10, False)],  # lower or same seq, newer ts: the agent restarted
)
def test_duplicate_versus_restart(seq: int, dt_s: int, duplicate: bool) -> None:
    stage = make_stage()
    handle(stage, 0, batch("rack-h1-k1", pdu(10, T0)))
    out = handle(stage, 1, batch("rack-h1-k1", pdu(seq, T0 + dt_s * S)))
    assert [d.reason for _, d in out.dead] == (["duplicate"] if duplicate else [])
    device = stage.state[device_key(SITE, "pdu-h1-k1")]
    assert (device.seq, device.ts_ms) == ((10, T0) if duplicate else (seq, T0 + dt_s * S))


def test_redelivered_offsets_are_skipped_without_output() -> None:
    stage = make_stage()
    first = batch("rack-h1-k1", pdu(0, T0))
    handle(stage, 41, first)
    assert stage.state[OFFSET_KEY] == 41
    for offset in (41, 40, 0):  # a rebalance or restart rewinds: the outcome already went out
        out = handle(stage, offset, first)
        assert (out.valid, out.dead, out.counts) == ([], [], {"redelivered": 1})
    out = handle(stage, 42, batch("rack-h1-k1", pdu(1, T0 + 10 * S)))
    assert len(out.valid) == 1 and stage.state[OFFSET_KEY] == 42


def test_a_record_the_stage_fails_on_is_dead_lettered_stage_error_and_the_stage_goes_on(monkeypatch) -> None:
    stage = make_stage()

    def broken(value: bytes | None, key: bytes | None, limit: int) -> Any:
        raise ZeroDivisionError("float division by zero")

    record = batch("rack-h1-k1", pdu(0, T0))
    monkeypatch.setattr(stage_module, "parse_record", broken)
    out = handle(stage, 5, record)
    (_, letter), = out.dead
    assert letter.reason == "stage_error" and "ZeroDivisionError" in letter.detail
    assert base64.b64decode(letter.original_value_b64) == record[1] and letter.sample_index is None
    assert stage.state[OFFSET_KEY] == 5  # handled once
    assert handle(stage, 5, record).counts == {"redelivered": 1}
    monkeypatch.undo()
    assert handle(stage, 6, batch("rack-h1-k1", pdu(1, T0 + 10 * S))).valid != []


def test_a_stage_error_on_a_new_devices_first_sample_leaves_no_dangling_device(monkeypatch) -> None:
    """If the stage fails half way through a new device's first sample, the site's device list
    must not name a device without state (every later watermark of the site would fail on it,
    stage_error, and the site's windows would never close on this partition again), nor name a
    device twice once it reports again (its energy would be summed twice)."""
    stage = make_stage()
    handle(stage, 0, watermark(T0 + 9 * S))
    real_fold = stage_module.fold

    def fold_failing_for_pdu_a(state: Any, ts_ms: int, *args: Any) -> None:
        if ts_ms == T0 + S:  # pdu-a's first sample
            raise RuntimeError("a bug")
        real_fold(state, ts_ms, *args)

    monkeypatch.setattr(stage_module, "fold", fold_failing_for_pdu_a)
    assert [d.reason for _, d in handle(stage, 1, batch("rack-h1-k1", pdu(0, T0 + S, device="pdu-a"))).dead] \
        == ["stage_error"]
    monkeypatch.undo()
    handle(stage, 2, batch("rack-h1-k1", pdu(0, T0 + 2 * S)))
    closed = handle(stage, 3, watermark(T0 + MINUTE + 30 * S))  # closes [T0, T0 + 1 min)
    assert [d.reason for _, d in closed.dead] == [] and [p.start_ms for p in closed.partials] == [T0]
    handle(stage, 4, batch("rack-h1-k1", pdu(1, T0 + MINUTE + S, device="pdu-a")))
    names = stage.state[devices_key(SITE)]
    assert len(names) == len(set(names))


def test_late_samples_are_counted_forwarded_and_left_out_of_closed_windows() -> None:
    stage = make_stage()
    handle(stage, 0, watermark(T0 + 9 * S))  # the site's first watermark: closing starts at T0
    handle(stage, 1, batch("rack-h1-k1", pdu(0, T0 + S)))
    closed = handle(stage, 2, watermark(T0 + MINUTE + 30 * S))  # closes [T0, T0 + 1 min)
    assert [p.start_ms for p in closed.partials] == [T0]
    late = batch("rack-h1-k1", pdu(1, T0 + 20 * S), pdu(2, T0 + MINUTE + 40 * S))
    out = handle(stage, 3, late)
    assert out.counts["late"] == 1 and out.valid == [late] and out.dead == []
    device = stage.state[device_key(SITE, "pdu-h1-k1")]
    assert set(device.windows) == {T0 + MINUTE}  # the late sample was not folded


def test_a_sequence_number_beyond_64_bits_cannot_break_the_checkpoint() -> None:
    """orjson writes integers up to 64 bits only: if the stage accepts a larger seq into its state,
    encoding the state at the checkpoint raises, the batch can never be checkpointed and the
    worker exits on it again after every restart."""
    stage = make_stage()
    value = json.dumps({"schema": TELEMETRY_SCHEMA, "site": SITE, "agent": "rack-h1-k1",
                        "samples": [sample("pdu-h1-k1", "pdu", 2**64, T0, {"power_kw": 1.0})]}).encode()
    out = handle(stage, 0, (b"s1/rack-h1-k1", value))
    assert out.counts["samples_valid"] + out.counts["invalid_fields"] == 1
    stage.state.dirty_buckets()  # must not raise


# ---- dead letters always fit a Kafka message ----------------------------------------------------

def _check_bounded(letter_bytes: bytes, original: bytes) -> None:
    decoded = orjson.loads(letter_bytes)
    assert len(letter_bytes) < KAFKA_LIMIT
    kept = base64.b64decode(decoded["original_value_b64"])
    assert kept == original[:DEADLETTER_ORIGINAL_BYTES]
    assert decoded["original_truncated"] is (len(original) > DEADLETTER_ORIGINAL_BYTES)
    assert decoded["original_size"] == len(original)
    assert decoded["original_sha256"] == hashlib.sha256(original).hexdigest()


def _value_800k() -> bytes:
    return b'{"schema":"dcpulse.telemetry/2","x":"' + bytes(range(48, 58)) * 80_000 + b'"}'


def _value_2m_compressible() -> bytes:
    return b"{" + b" " * (2 * 1024 * 1024) + b"}"


@pytest.mark.parametrize("value", [_value_800k(), _value_2m_compressible()], ids=["800KB", "2MB-compressible"])
def test_a_dead_letter_of_a_large_value_serialises_under_a_megabyte(value: bytes) -> None:
    letter = dead_letter(Rejection("oversize", "x" * 10_000), stage="validate", topic="raw", partition=0,
                         offset=1, key=b"k" * 100_000, value=value)
    _check_bounded(letter.to_bytes(), value)
    assert len(letter.detail) <= 2000 and len(base64.b64decode(letter.original_key_b64 or "")) <= 1024


@pytest.mark.parametrize("value", [_value_800k(), _value_2m_compressible()], ids=["800KB", "2MB-compressible"])
def test_the_stages_dead_letter_of_a_large_value_serialises_under_a_megabyte(value: bytes) -> None:
    out = handle(make_stage(), 0, (b"s1/rack-h1-k1", value))
    (_, letter), = out.dead
    assert letter.reason == "oversize"
    _check_bounded(letter.to_bytes(), value)


def test_dead_letters_of_large_records_under_the_limit_are_bounded_too() -> None:
    big_metrics = {f"m{i:06d}": float(i) for i in range(29_000)}  # a ~500 KB sample, under the record limit
    bad = sample("pdu-x", "pdu", 0, T0, {**big_metrics, "power_kw": -1.0})
    key, value = batch("rack-h1-k1", pdu(0, T0), bad)
    assert DEADLETTER_ORIGINAL_BYTES < len(value) <= MAX_MESSAGE_BYTES
    out = handle(make_stage(), 0, (key, value))
    (_, letter), = out.dead
    assert letter.sample_index == 1
    _check_bounded(letter.to_bytes(), orjson.dumps(bad))
    malformed = value[:-1]
    (_, whole), = handle(make_stage(), 0, (key, malformed)).dead
    _check_bounded(whole.to_bytes(), malformed)


def test_a_small_dead_letter_keeps_the_whole_original() -> None:
    letter = dead_letter(Rejection("malformed_json", "x"), stage="validate", topic="t", partition=2, offset=99,
                         key=None, value=b"\xff\x00garbage")
    decoded = orjson.loads(letter.to_bytes())
    assert decoded["schema"] == "dcpulse.deadletter/2" and decoded["original_key_b64"] is None
    assert base64.b64decode(decoded["original_value_b64"]) == b"\xff\x00garbage"
    assert (decoded["original_truncated"], decoded["original_size"]) == (False, 9)
    assert (decoded["source_topic"], decoded["source_partition"], decoded["source_offset"]) == ("t", 2, 99)


# ---- state keys ----------------------------------------------------------------------------------

def test_the_stage_keeps_its_state_under_typed_keys() -> None:
    stage = make_stage()
    handle(stage, 0, batch("rack-h1-k1", pdu(0, T0), pdu(0, T0, device="pdu-a")))
    handle(stage, 1, watermark(T0 + 8 * S))  # held ...
    assert stage.state[held_key(SITE)] == T0 + 8 * S
    handle(stage, 2, watermark(T0 + 9 * S))  # ... and confirmed
    assert stage.state[devices_key(SITE)] == ["pdu-a", "pdu-h1-k1"]  # sorted: the windows sum in name order
    assert stage.state[clock_key(SITE)].watermark_ms == T0 + 9 * S
    assert set(stage.state) == {OFFSET_KEY, devices_key(SITE), clock_key(SITE),
                                device_key(SITE, "pdu-a"), device_key(SITE, "pdu-h1-k1")}


def test_a_device_silent_for_meter_forget_s_is_forgotten() -> None:
    stage = make_stage(analytics=AnalyticsSettings(meter_forget_s=120))
    handle(stage, 0, batch("rack-h1-k1", pdu(0, T0 + S), pdu(0, T0 + S, device="pdu-b")))
    offset = 1
    for minute in range(1, 5):  # pdu-b stops; pdu-h1-k1 goes on
        handle(stage, offset, batch("rack-h1-k1", pdu(minute, T0 + minute * MINUTE + S)))
        handle(stage, offset + 1, watermark(T0 + minute * MINUTE + 30 * S))
        offset += 2
    assert stage.state[devices_key(SITE)] == ["pdu-h1-k1"]
    assert device_key(SITE, "pdu-b") not in stage.state


# ---- the Faust worker's wiring (no broker) ---------------------------------------------------------

def test_producer_ms_is_the_kafka_timestamp_in_ms() -> None:
    from types import SimpleNamespace

    from dcpulse.streams.app import producer_ms

    def event(ts: float | None) -> Any:
        return SimpleNamespace(message=SimpleNamespace(timestamp=ts))

    assert producer_ms(event(1795302870.18)) == 1795302870180
    assert producer_ms(event(None)) is None and producer_ms(event(-1.0)) is None


def test_faust_tables_are_co_partitioned_with_their_input_topics(monkeypatch) -> None:
    import dcpulse.streams.app as app_module

    monkeypatch.setattr(app_module, "raw_partitions", lambda settings: 7)  # no broker to ask
    monkeypatch.setattr(app_module, "ensure_topics", lambda kafka, specs: [])  # nor to create topics on
    monkeypatch.setenv("DCPULSE_KAFKA__SECURITY", "plaintext")  # no login to read
    settings = Settings()
    app = app_module.create_app(settings)
    tables = {t.name: t for t in app.tables.values()}
    assert tables["dcpulse-state"].partitions == 7
    assert tables["dcpulse-sites"].partitions == settings.topics.derived_partitions
    assert app.conf.id == settings.topics.group("streams")


def test_recovery_stops_the_flow_before_seeking_stream_partitions() -> None:
    """The faust work-around in streams/app.py: nothing is fetched between resuming the stream
    partitions and seeking them to the committed offsets."""
    from faust.tables.recovery import Recovery

    from dcpulse.streams.app import seek_before_resuming_streams

    seek_before_resuming_streams()
    seek_before_resuming_streams()  # idempotent: wraps the original once
    patched = Recovery.on_recovery_completed
    assert getattr(patched, "dcpulse_stops_flow_first", False)

    calls: list[str] = []

    class Stop(Exception):
        pass

    class Signal:
        async def send(self) -> None:
            calls.append("original ran")
            raise Stop

    class Fake:
        class app:  # noqa: N801
            on_rebalance_complete = Signal()

            class consumer:  # noqa: N801
                @staticmethod
                def stop_flow() -> None:
                    calls.append("stop_flow")

        log = type("Log", (), {"info": staticmethod(lambda *a, **k: None)})()

    with pytest.raises(Stop):
        asyncio.run(patched(Fake(), 0))  # type: ignore[arg-type]
    assert calls == ["stop_flow", "original ran"]


def test_toy_site_registers_rise_at_their_power() -> None:
    """The builder itself: a minute of a register is its power over 60 (kWh)."""
    toy = ToySite()
    assert math.isclose(toy.kwh(120.0, T0 + MINUTE) - toy.kwh(120.0, T0), 2.0)
    batches = toy.tick(T0 + 10 * S)
    assert [k for k, _ in batches] == [f"{SITE}/{a}".encode() for a in toy.agents()]
    assert all(not isinstance(parse_record(v, k), Rejection) for k, v in batches)
