import asyncio
import base64
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.contract import MAX_MESSAGE_BYTES, Telemetry
from dcpulse.settings import Settings
from dcpulse.streams.validation import (
    ABSURD_LIMITS,
    REASON_PRIORITY,
    DeviceSeen,
    PartitionClock,
    Rejection,
    absurd_values,
    already_handled,
    check_clock_skew,
    check_duplicate,
    dead_letter,
    device_key,
    epoch_us,
    judge,
    mark_handled,
    metric_limits,
    partition_key,
    process_record,
    producer_time_us,
    validate,
)

GOOD = {
    "schema": "dcpulse.telemetry/1", "site": "hengqin", "hall": "h1", "rack": "r01-k01",
    "device": "pdu-1", "kind": "pdu", "seq": 7, "ts": "2026-11-22T10:00:00.250Z",
    "metrics": {"power_kw": 42.5, "energy_kwh": 1234.5},
}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def raw(**changes: object) -> bytes:
    return orjson.dumps({**GOOD, **changes})


def without(*fields: str) -> bytes:
    return orjson.dumps({k: v for k, v in GOOD.items() if k not in fields})


def reason_of(value: bytes | None, **kwargs: int) -> str:
    outcome = validate(value, **kwargs)
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


def test_good_record_round_trips() -> None:
    event = validate(raw())
    assert isinstance(event, Telemetry)
    assert device_key(event) == "hengqin/pdu-1"
    assert event.ts.isoformat() == "2026-11-22T10:00:00.250000+00:00"
    assert validate(event.to_bytes()) == event


# ---- every reason, with a minimal example ---------------------------------------------------

@pytest.mark.parametrize(
    "value, reason, detail",
    [
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversize", "bytes > limit"),
        (b"{not json", "malformed_json", ""),
        (None, "malformed_json", "tombstone"),
        (b"", "malformed_json", ""),
        (b"\xff\xfe garbage", "malformed_json", ""),
        (raw()[:-7], "malformed_json", ""),
        # A NaN inside a document that is broken anyway is malformed, not non-finite.
        (b'{"schema": "dcpulse.telemetry/1", "site": "demo", "metrics": {NaN', "malformed_json", ""),
        (raw().replace(b"42.5", b"NaN"), "non_finite", "NaN"),
        (raw().replace(b"42.5", b"Infinity"), "non_finite", "Infinity"),
        (raw().replace(b"42.5", b"-Infinity"), "non_finite", "-Infinity"),
        (raw().replace(b"42.5", b"1e400"), "non_finite", "infinity"),
        (without("device"), "missing_field", "device"),
        (without("ts"), "missing_field", "ts"),
        (without("metrics"), "missing_field", "metrics"),
        (raw(extra_field=1), "unknown_field", "extra_field"),
        (raw(seq="seven"), "wrong_type", "seq"),
        (raw(seq=7.5), "wrong_type", "seq"),
        (raw(kind="toaster"), "wrong_type", "kind"),
        (raw(metrics={"power_kw": "high"}), "wrong_type", "metrics.power_kw"),
        (raw(metrics={"power_kw": None}), "wrong_type", "metrics.power_kw"),
        (raw(metrics=[1.0]), "wrong_type", "metrics"),
        (raw(site=None), "wrong_type", "site"),
        (raw(ts="yesterday"), "wrong_type", "ts"),
        (b"[]", "wrong_type", "<root>"),
        (b"42", "wrong_type", "<root>"),
        (raw(seq=-1), "invalid_fields", "seq"),
        (raw(metrics={}), "invalid_fields", "metrics"),
        (raw(ts="2026-11-22T10:00:00"), "invalid_fields", "time zone"),
        (raw(schema="dcpulse.telemetry/9"), "invalid_fields", "schema"),
        (raw(device="bad device/with slash"), "invalid_fields", "device"),
        (raw(metrics={"bad name": 1.0}), "invalid_fields", "metrics"),
        (raw(metrics={"power_kw": -1.0}), "absurd_value", "metrics.power_kw"),
        (raw(metrics={"inlet_c": 451.0}), "absurd_value", "metrics.inlet_c"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(value: bytes | None, reason: str, detail: str) -> None:
    outcome = validate(value)
    assert isinstance(outcome, Rejection)
    assert (outcome.reason, detail in outcome.detail) == (reason, True), outcome


def test_non_finite_python_floats_are_rejected_by_the_model() -> None:
    with pytest.raises(ValueError, match="finite"):
        Telemetry.model_validate({**GOOD, "metrics": {"power_kw": math.nan}})


def test_oversize_is_rejected_before_parsing_and_the_limit_is_a_parameter() -> None:
    assert reason_of(b"{" + b" " * MAX_MESSAGE_BYTES + b"}") == "oversize"
    message = raw()
    assert isinstance(validate(message, max_message_bytes=len(message)), Telemetry)
    assert reason_of(message, max_message_bytes=len(message) - 1) == "oversize"
    # Oversize wins over everything, even over not being JSON at all.
    assert reason_of(b"\xff" * 100, max_message_bytes=99) == "oversize"


# ---- absurd values: the table and its edges ---------------------------------------------------

@pytest.mark.parametrize(
    "name, low, high",
    [
        ("inlet_c", -50, 150), ("acc3_temp_c", -50, 150), ("dry_bulb_c", -50, 150),
        ("cpu_util", 0, 1), ("acc7_util", 0, 1),
        ("power_w", 0, 200_000), ("acc0_power_w", 0, 200_000), ("fan_w", 0, 200_000),
        ("power_kw", 0, 1_000_000), ("output_power_kw", 0, 1_000_000), ("rated_kw", 0, 1_000_000),
        ("energy_kwh", 0, 1e12), ("input_energy_kwh", 0, 1e12),
        ("load_pct", 0, 100), ("level_pct", 0, 100),
        ("flow_l_min", 0, math.inf), ("volume_l", 0, math.inf),
        ("dp_bar", 0, math.inf), ("pressure_bar", 0, math.inf),
    ],
)
def test_absurd_value_table_edges(name: str, low: float, high: float) -> None:
    assert metric_limits(name) == (low, high)
    assert absurd_values({name: float(low)}) == []  # bounds are included
    assert absurd_values({name: math.nextafter(float(low), -math.inf)}) != []
    assert reason_of(raw(metrics={name: low - 1.0})) == "absurd_value"
    if math.isfinite(high):
        assert absurd_values({name: float(high)}) == []
        assert absurd_values({name: math.nextafter(float(high), math.inf)}) != []
        assert reason_of(raw(metrics={name: high * 2 + 1})) == "absurd_value"
    else:
        assert absurd_values({name: 1e300}) == []


@pytest.mark.parametrize("name", ["acc0_throttle", "leak", "pumps_running", "running", "economiser_share",
                                  "mystery", "c", "kw", "util", "energy_kwh_rate"])
def test_unknown_metric_names_are_not_judged(name: str) -> None:
    assert metric_limits(name) is None
    assert isinstance(validate(raw(metrics={name: -1e300})), Telemetry)


def test_energy_register_reset_to_zero_is_fine_and_every_absurd_metric_is_named() -> None:
    assert isinstance(validate(raw(metrics={"power_kw": 0.0, "energy_kwh": 0.0})), Telemetry)
    outcome = validate(raw(metrics={"power_kw": -1.0, "inlet_c": 20.0, "cpu_util": 1.5}))
    assert isinstance(outcome, Rejection) and outcome.reason == "absurd_value"
    assert "metrics.power_kw" in outcome.detail and "metrics.cpu_util" in outcome.detail
    assert "inlet_c" not in outcome.detail


def test_table_suffixes_do_not_shadow_each_other() -> None:
    # The first matching suffix decides, so no suffix may end with an earlier one.
    suffixes = [suffix for suffix, _, _ in ABSURD_LIMITS]
    for earlier, later in itertools.combinations(suffixes, 2):
        assert not later.endswith(earlier), (earlier, later)


# ---- the reason is deterministic when several rules are broken ----------------------------------

# Independent breakages, each on its own field, with the reason each gives alone.
BREAKAGES: dict[str, str] = {
    "drop_ts": "missing_field",
    "extra": "unknown_field",
    "seq_type": "wrong_type",
    "kind_enum": "wrong_type",
    "device_pattern": "invalid_fields",
    "absurd": "absurd_value",
    "nan": "non_finite",
}


def broken(names: list[str]) -> bytes:
    """GOOD with the named breakages, fields in the given (shuffled) order."""
    obj = dict(GOOD)
    obj["metrics"] = dict(GOOD["metrics"])  # type: ignore[arg-type]
    for name in names:
        if name == "drop_ts":
            del obj["ts"]
        elif name == "extra":
            obj["colour"] = "red"
        elif name == "seq_type":
            obj["seq"] = "seven"
        elif name == "kind_enum":
            obj["kind"] = "toaster"
        elif name == "device_pattern":
            obj["device"] = "no spaces allowed"
        elif name == "absurd":
            obj["metrics"]["power_kw"] = -5.0  # type: ignore[index]
    value = orjson.dumps(obj)
    if "nan" in names:
        value = value.replace(b"1234.5", b"NaN")
    return value


def test_each_breakage_alone_gives_its_reason() -> None:
    for name, reason in BREAKAGES.items():
        assert reason_of(broken([name])) == reason, name


@given(st.lists(st.sampled_from(sorted(BREAKAGES)), min_size=1, unique=True), st.randoms())
def test_several_breakages_give_the_highest_priority_reason(names: list[str], rng) -> None:
    expected = min((BREAKAGES[n] for n in names), key=REASON_PRIORITY.index)
    first = validate(broken(names))
    assert isinstance(first, Rejection) and first.reason == expected
    shuffled = list(names)
    rng.shuffle(shuffled)
    again = validate(broken(shuffled))
    assert isinstance(again, Rejection) and again.reason == expected


def test_priority_examples() -> None:
    assert reason_of(broken(["drop_ts", "extra", "seq_type"])) == "missing_field"
    assert reason_of(broken(["extra", "kind_enum", "device_pattern"])) == "unknown_field"
    assert reason_of(broken(["device_pattern", "seq_type"])) == "wrong_type"
    assert reason_of(broken(["drop_ts", "nan"])) == "non_finite"
    assert reason_of(broken(["absurd", "device_pattern"])) == "invalid_fields"
    outcome = validate(broken(["device_pattern", "seq_type"]))
    assert isinstance(outcome, Rejection)
    assert outcome.detail.startswith("seq:") and "device:" in outcome.detail  # the deciding error first


# ---- stateful rules as pure functions ---------------------------------------------------------

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
S = 1_000_000  # one second in us


def us(seconds: float) -> int:
    return epoch_us(T0) + round(seconds * S)


def test_epoch_us_is_exact() -> None:
    assert epoch_us(datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)) == 1_000_001
    assert epoch_us(T0 + timedelta(microseconds=7)) - epoch_us(T0) == 7


def test_duplicate_first_sample_is_accepted() -> None:
    assert check_duplicate(None, 5, us(0)) == (None, DeviceSeen(5, us(0)))


@pytest.mark.parametrize(
    "seq, ts, duplicate",
    [
        (10, 0, True),     # the same sample again
        (9, -10, True),    # an older sample redelivered
        (10, -1, True),
        (9, 0, True),
        (11, 10, False),   # the next sample
        (11, -5, False),   # newer seq, clock went back a little: not a duplicate
        (0, 10, False),    # lower seq, newer ts: the agent restarted
        (10, 10, False),   # same seq, newer ts: restarted and caught up
    ],
)
def test_duplicate_versus_restart(seq: int, ts: float, duplicate: bool) -> None:
    state = DeviceSeen(10, us(0))
    verdict, new_state = check_duplicate(state, seq, us(ts))
    if duplicate:
        assert verdict is not None and verdict.reason == "duplicate"
        assert new_state == state
    else:
        assert verdict is None
        assert new_state == DeviceSeen(seq, us(ts))


def test_after_a_restart_the_counter_starts_again() -> None:
    state = DeviceSeen(500, us(0))
    verdict, state = check_duplicate(state, 0, us(10))  # restart
    assert verdict is None and state == DeviceSeen(0, us(10))
    verdict, state = check_duplicate(state, 1, us(20))
    assert verdict is None and state == DeviceSeen(1, us(20))
    verdict, _ = check_duplicate(state, 1, us(20))  # redelivered
    assert verdict is not None and verdict.reason == "duplicate"


LIMIT = 60 * S


def test_first_record_of_a_partition_sets_the_watermark() -> None:
    assert check_clock_skew(None, us(1e6), None, LIMIT) == (None, PartitionClock(us(1e6), None))


@pytest.mark.parametrize(
    "ahead_s, skewed",
    [(0, False), (30, False), (60, False), (60.000001, True), (61, True), (600, True),
     (-1, False), (-3600, False), (-86400 * 365, False)],  # behind: never rejected here
)
def test_skew_ahead_versus_behind(ahead_s: float, skewed: bool) -> None:
    state = PartitionClock(us(0), None)
    verdict, new_state = check_clock_skew(state, us(ahead_s), None, LIMIT)
    if skewed:
        assert verdict is not None and verdict.reason == "clock_skew"
        assert new_state == state  # a rejected record does not move the watermark
    else:
        assert verdict is None
        assert new_state == PartitionClock(max(us(0), us(ahead_s)), None)


def test_watermark_follows_accepted_records_only() -> None:
    state = None
    verdicts = []
    for t in (0, 10, 20, 700, 30, 85, 140, 150):  # 700 s: one agent's clock 11 min ahead
        verdict, state = check_clock_skew(state, us(t), None, LIMIT)
        verdicts.append(verdict.reason if verdict else "ok")
    assert verdicts == ["ok", "ok", "ok", "clock_skew", "ok", "ok", "ok", "ok"]
    assert state == PartitionClock(us(150), None)


def test_producer_time_carries_the_partition_clock_across_a_pause() -> None:
    # Records on the partition until T0 (sent at T0), then nothing for an hour.
    state = PartitionClock(us(0), us(0))
    assert check_clock_skew(state, us(3600), us(3600), LIMIT)[0] is None  # live data resumes
    # A replay with --shift-to-now: event times 1 h before the Kafka timestamps, with a pause.
    shifted = PartitionClock(us(0), us(3600))
    verdict, after = check_clock_skew(shifted, us(1800), us(5400), LIMIT)
    assert verdict is None and after == PartitionClock(us(1800), us(5400))
    # But an agent 10 min ahead while the partition is busy is caught (its Kafka time is now).
    verdict, _ = check_clock_skew(PartitionClock(us(0), us(0)), us(600), us(1), LIMIT)
    assert verdict is not None and verdict.reason == "clock_skew"


def test_live_data_after_a_replay_of_old_data_is_not_skew() -> None:
    # The partition carried a week-old recording, replayed just now with its original timestamps.
    week = 7 * 86400
    state = PartitionClock(us(-week), us(-week))
    # Then live data: its event time agrees with its Kafka timestamp.
    verdict, state = check_clock_skew(state, us(0), us(0.2), LIMIT)
    assert verdict is None and state == PartitionClock(us(0), us(0.2))
    # A skewed agent in the old recording is caught whatever the replay speed (same timestamps).
    verdict, _ = check_clock_skew(PartitionClock(us(-week), us(-week)), us(-week + 600), us(-week + 1), LIMIT)
    assert verdict is not None and verdict.reason == "clock_skew"


def test_skew_verdicts_depend_only_on_the_records_in_order() -> None:
    records = [(us(t), us(k)) for t, k in [(0, 0), (5, 0.1), (700, 0.2), (10, 0.3), (-20, 0.4), (3600, 3600)]]

    def run() -> list[str]:
        state, out = None, []
        for ts, kafka in records:
            verdict, state = check_clock_skew(state, ts, kafka, LIMIT)
            out.append(verdict.reason if verdict else "ok")
        return out

    assert run() == run() == ["ok", "ok", "clock_skew", "ok", "ok", "ok"]


def event(seq: int, seconds: float, device: str = "pdu-1") -> Telemetry:
    return Telemetry.model_validate({**GOOD, "device": device, "seq": seq,
                                     "ts": (T0 + timedelta(seconds=seconds)).isoformat()})


def test_judge_moves_state_only_for_accepted_records() -> None:
    verdict, clock, seen = judge(event(0, 0), us(0), None, None, 60)
    assert verdict is None and clock == PartitionClock(us(0), us(0)) and seen == DeviceSeen(0, us(0))
    # A duplicate leaves both states alone (not even the producer time moves).
    verdict, clock2, seen2 = judge(event(0, 0), us(5), clock, seen, 60)
    assert verdict is not None and verdict.reason == "duplicate" and (clock2, seen2) == (clock, seen)
    # A skewed record neither moves the watermark nor counts as the device's last sample.
    verdict, clock3, seen3 = judge(event(1, 600), us(6), clock, seen, 60)
    assert verdict is not None and verdict.reason == "clock_skew" and (clock3, seen3) == (clock, seen)
    # So the device's real next sample is fine.
    verdict, clock4, seen4 = judge(event(1, 10), us(10), clock, seen, 60)
    assert verdict is None and clock4 == PartitionClock(us(10), us(10)) and seen4 == DeviceSeen(1, us(10))
    # The limit is a parameter.
    assert judge(event(2, 50), us(10), clock4, seen4, 30)[0].reason == "clock_skew"  # type: ignore[union-attr]


def test_state_encoding_round_trips_and_keys() -> None:
    for state in (DeviceSeen(3, us(1.5)), PartitionClock(us(2), None), PartitionClock(us(2), us(3))):
        assert type(state).from_state(state.to_state()) == state
    assert DeviceSeen.from_state(None) is None and PartitionClock.from_state(None) is None
    assert partition_key(4) == "__partition__/4"
    assert device_key(event(0, 0, device="srv-9")) == "hengqin/srv-9"
    assert producer_time_us(None) is None and producer_time_us(-0.001) is None
    assert producer_time_us(1795302870.18) == 1795302870180000


def test_process_record_runs_the_whole_stage_over_a_partition_sequence() -> None:
    def value(device: str, seq: int, seconds: float) -> bytes:
        return event(seq, seconds, device).to_bytes()

    sent = 0.0
    records = [  # (partition, value, expected outcome)
        (0, value("a", 0, 0), "ok"),
        (0, value("b", 0, 0.5), "ok"),
        (1, value("c", 0, -30), "ok"),                 # another partition, its own clock
        (0, value("a", 1, 10), "ok"),
        (0, value("a", 1, 10), "duplicate"),
        (0, value("b", 1, 700), "clock_skew"),         # agent b 11 min ahead
        (0, value("b", 1, 10.5), "ok"),                # b's real next sample: not a duplicate
        (1, value("c", 1, 400), "clock_skew"),         # ahead of partition 1's clock
        (0, value("a", 0, 20), "ok"),                  # a restarted
        (0, raw(seq="seven"), "wrong_type"),
        (0, value("a", 2, 30).replace(b"42.5", b"-42.5"), "absurd_value"),
        (0, value("a", 2, -3600), "ok"),               # late, not this stage's business
    ]
    clocks: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    outcomes = []
    for partition, payload, _ in records:
        sent += 0.1
        outcome = process_record(payload, partition, us(sent), clocks, devices, key=b"hengqin")
        outcomes.append(outcome.reason if isinstance(outcome, Rejection) else "ok")
    assert outcomes == [expected for _, _, expected in records]
    assert PartitionClock.from_state(clocks["__partition__/0"]) == PartitionClock(us(20), us(1.2))
    assert DeviceSeen.from_state(devices["hengqin/a"]) == DeviceSeen(2, us(-3600))
    assert set(devices) == {"hengqin/a", "hengqin/b", "hengqin/c"}


def test_each_raw_offset_is_handled_once() -> None:
    clocks: dict[str, Any] = {}
    assert not already_handled(clocks, 3, 0)
    mark_handled(clocks, 3, 41)
    assert clocks == {"__partition__/3/offset": 41}
    # Redelivered after a rebalance or restart (at least once): its outcome already went out.
    assert already_handled(clocks, 3, 40) and already_handled(clocks, 3, 41)
    assert not already_handled(clocks, 3, 42)
    assert not already_handled(clocks, 4, 0)  # per partition


# ---- dead letters, settings, docs -------------------------------------------------------------

def test_dead_letter_keeps_the_original_bytes_and_origin() -> None:
    letter = dead_letter(Rejection("malformed_json", "x"), stage="validate", topic="t",
                         partition=2, offset=99, key=b"k", value=b"\xff\x00garbage")
    assert base64.b64decode(letter.original_value_b64) == b"\xff\x00garbage"
    assert base64.b64decode(letter.original_key_b64 or "") == b"k"
    decoded = orjson.loads(letter.to_bytes())
    assert decoded["schema"] == "dcpulse.deadletter/1"
    assert (decoded["source_topic"], decoded["source_partition"], decoded["source_offset"]) == ("t", 2, 99)


def test_validation_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.validation.max_clock_skew_s, s.validation.max_message_bytes) == (60.0, MAX_MESSAGE_BYTES)
    monkeypatch.setenv("DCPULSE_VALIDATION__MAX_CLOCK_SKEW_S", "5.5")
    monkeypatch.setenv("DCPULSE_VALIDATION__MAX_MESSAGE_BYTES", "1024")
    s = Settings()
    assert (s.validation.max_clock_skew_s, s.validation.max_message_bytes) == (5.5, 1024)


def test_faust_tables_are_co_partitioned_with_the_raw_topic() -> None:
    from dcpulse.streams.app import create_app

    settings = Settings()
    app = create_app(settings)
    tables = {t.name: t for t in app.tables.values()}
    assert set(tables) == {"dcpulse-state"}
    assert tables["dcpulse-state"].partitions == settings.topics.telemetry_partitions


def test_recovery_stops_the_flow_before_seeking_stream_partitions() -> None:
    """The faust work-around in streams/app.py: nothing is fetched between resuming the stream
    partitions and seeking them to the committed offsets."""
    from faust.tables.recovery import Recovery

    from dcpulse.streams.app import create_app, seek_before_resuming_streams

    create_app(Settings())
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


def test_every_reason_and_suffix_is_documented() -> None:
    schema_doc = (DOCS / "schema.md").read_text()
    section = schema_doc[schema_doc.index("## Dead letter v1"):]
    for reason in REASON_PRIORITY:
        assert f"`{reason}`" in section, reason
    for suffix, _, _ in ABSURD_LIMITS:
        assert suffix in section, suffix
    assert "## Validation" in (DOCS / "architecture.md").read_text()


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    assert isinstance(validate(payload), (Telemetry, Rejection))


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=20))
def test_arbitrary_json_never_raises(doc: object) -> None:
    value = json.dumps({**GOOD, "metrics": doc}).encode()  # NaN, Infinity and huge ints included
    assert isinstance(validate(value), (Telemetry, Rejection))
