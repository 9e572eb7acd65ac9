"""The stateless rules (streams/validation.py): raw Kafka bytes -> a batch whose samples are each
valid or rejected, a watermark, or a rejection of the whole record."""

import itertools
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.contract import MAX_MESSAGE_BYTES, MAX_SAMPLES, Sample, Watermark
from dcpulse.deadletter import Rejection
from dcpulse.settings import Settings
from dcpulse.streams.validation import (
    ABSURD_LIMITS,
    REASON_PRIORITY,
    REASONS,
    ParsedBatch,
    absurd_values,
    epoch_ms,
    iso_ms,
    metric_limits,
    parse_record,
    parse_sample,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
SITE, AGENT = "hengqin", "rack-h1-r01-k01"
KEY = f"{SITE}/{AGENT}".encode()
GOOD: dict[str, Any] = {
    "device": "pdu-h1-r01-k01", "kind": "pdu", "hall": "h1", "row": "r01", "rack": "h1-r01-k01",
    "seq": 7, "ts": "2026-11-22T10:00:00.250Z", "metrics": {"power_kw": 42.5, "energy_kwh": 1234.5},
}
TINY = {"device": "d", "kind": "pdu", "seq": 0, "ts": "2026-11-22T10:00:00Z", "metrics": {"x": 0}}
SERVER: dict[str, Any] = {
    "device": "h1-r01-k01-s01", "kind": "server", "hall": "h1", "row": "r01", "rack": "h1-r01-k01",
    "seq": 3, "ts": "2026-11-22T10:00:00.400Z", "metrics": {"power_w": 5400.0, "cpu_util": 0.4},
}


def batch(*samples: Any, **envelope: Any) -> bytes:
    return json.dumps({"schema": "dcpulse.telemetry/2", "site": SITE, "agent": AGENT,
                       "samples": list(samples), **envelope}).encode()  # json: integers of any size


def sample(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def without(*fields: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k not in fields}


def record_reason(value: bytes | None, key: bytes | None = KEY, **kwargs: int) -> str:
    outcome = parse_record(value, key, **kwargs)
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


def alone(item: Any) -> Sample | Rejection:
    """The verdict on one sample inside an otherwise good batch (a good sibling on each side)."""
    outcome = parse_record(batch(SERVER, item, SERVER), KEY)
    assert isinstance(outcome, ParsedBatch), outcome
    first, verdict, last = outcome.samples
    assert isinstance(first, Sample) and isinstance(last, Sample)  # its siblings go on
    return verdict


def test_a_good_batch_parses_and_keeps_every_sample_in_order() -> None:
    parsed = parse_record(batch(GOOD, SERVER), KEY)
    assert isinstance(parsed, ParsedBatch)
    assert (parsed.site, parsed.agent, parsed.all_valid, parsed.items) == (SITE, AGENT, True, None)
    assert [s.device for s in parsed.samples] == [GOOD["device"], SERVER["device"]]  # type: ignore[union-attr]
    assert parsed.samples[0] == Sample.model_validate(GOOD)


# ---- record-level reasons: the record is rejected whole -------------------------------------

@pytest.mark.parametrize(
    "value, reason, detail",
    [
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversize", "bytes > limit"),
        (None, "malformed_json", "tombstone"),
        (b"", "malformed_json", ""),
        (b"{not json", "malformed_json", ""),
        (b"\xff\xfe garbage", "malformed_json", ""),
        (batch(GOOD)[:-7], "malformed_json", ""),
        # A NaN inside a document that is broken anyway is malformed, not non-finite.
        (b'{"schema": "dcpulse.telemetry/2", "samples": [{"metrics": {"x": NaN', "malformed_json", ""),
        # NaN where a string belongs: read leniently, still no batch.
        (batch(GOOD).replace(b'"%s"' % SITE.encode(), b"NaN"), "wrong_type", "site"),
        (orjson.dumps({"schema": "dcpulse.telemetry/2", "site": SITE, "agent": AGENT}), "missing_field", "samples"),
        (orjson.dumps({"schema": "dcpulse.telemetry/2", "agent": AGENT, "samples": [GOOD]}), "missing_field", "site"),
        (batch(GOOD, colour="red"), "unknown_field", "colour"),
        (batch(GOOD, site=None), "wrong_type", "site"),
        (orjson.dumps({"schema": "dcpulse.telemetry/2", "site": SITE, "agent": AGENT, "samples": GOOD}),
         "wrong_type", "samples"),
        (b"[]", "wrong_type", "<root>"),
        (b"42", "wrong_type", "<root>"),
        (batch(), "invalid_fields", "samples"),
        (batch(GOOD, schema="dcpulse.telemetry/9"), "invalid_fields", "schema"),
        (batch(GOOD, agent="rack with space"), "invalid_fields", "agent"),
        (batch(*[TINY] * (MAX_SAMPLES + 1)), "invalid_fields", "samples"),  # under the byte limit
    ],
)
def test_records_that_are_not_a_batch_are_rejected_whole(value: bytes | None, reason: str, detail: str) -> None:
    outcome = parse_record(value, KEY)
    assert isinstance(outcome, Rejection), outcome
    assert (outcome.reason, detail in outcome.detail) == (reason, True), outcome


def test_a_v1_record_on_the_v2_topic_is_rejected_whole() -> None:
    v1 = orjson.dumps({"schema": "dcpulse.telemetry/1", "site": SITE, **GOOD})
    assert record_reason(v1, SITE.encode()) == "missing_field"  # no agent, no samples: the first reason


@pytest.mark.parametrize(
    "key",
    [None, SITE.encode(), f"{SITE}/rack-h1-r01-k02".encode(), f"other/{AGENT}".encode(), KEY + b" ", b""],
)
def test_a_key_other_than_the_batchs_agent_key_is_wrong_key(key: bytes | None) -> None:
    outcome = parse_record(batch(GOOD), key)
    assert isinstance(outcome, Rejection) and outcome.reason == "wrong_key"
    assert repr(key) in outcome.detail and f"{SITE}/{AGENT}" in outcome.detail


def test_wrong_key_is_also_found_when_some_sample_is_bad() -> None:
    assert record_reason(batch(GOOD, sample(seq=-1)), SITE.encode()) == "wrong_key"  # the slow path
    assert record_reason(batch(GOOD, sample(metrics={"power_kw": -1.0})), SITE.encode()) == "wrong_key"


def test_oversize_is_checked_before_parsing_and_the_limit_is_a_parameter() -> None:
    value = batch(GOOD)
    assert isinstance(parse_record(value, KEY, max_message_bytes=len(value)), ParsedBatch)
    assert record_reason(value, max_message_bytes=len(value) - 1) == "oversize"
    assert record_reason(b"\xff" * 100, None, max_message_bytes=99) == "oversize"  # wins over everything


# ---- sample-level reasons: the bad sample alone, its siblings go on ---------------------------

@pytest.mark.parametrize(
    "item, reason, detail",
    [
        (without("device"), "missing_field", "device"),
        (without("ts"), "missing_field", "ts"),
        (without("metrics"), "missing_field", "metrics"),
        (sample(extra_field=1), "unknown_field", "extra_field"),
        (sample(seq="seven"), "wrong_type", "seq"),
        (sample(seq=7.5), "wrong_type", "seq"),
        (sample(kind="toaster"), "wrong_type", "kind"),
        (sample(metrics={"power_kw": "high"}), "wrong_type", "metrics.power_kw"),
        (sample(metrics={"power_kw": None}), "wrong_type", "metrics.power_kw"),
        (sample(metrics=[1.0]), "wrong_type", "metrics"),
        (sample(ts="yesterday"), "wrong_type", "ts"),
        (42, "wrong_type", "<root>"),
        ([GOOD], "wrong_type", "<root>"),
        (sample(seq=-1), "invalid_fields", "seq"),
        (sample(metrics={}), "invalid_fields", "metrics"),
        (sample(ts="2026-11-22T10:00:00"), "invalid_fields", "time zone"),
        (sample(device="bad device/with slash"), "invalid_fields", "device"),
        (sample(metrics={"bad name": 1.0}), "invalid_fields", "metrics"),
        (sample(metrics={"power_kw": -1.0}), "absurd_value", "metrics.power_kw"),
        (sample(metrics={"inlet_c": 451.0}), "absurd_value", "metrics.inlet_c"),
        # Field keys InfluxDB keeps for itself: stored oddly or not at all before.
        (sample(metrics={"power_kw": 1.0, "_field": 2.0}), "invalid_fields", "metrics._field: reserved"),
        (sample(metrics={"_measurement": 2.0}), "invalid_fields", "metrics._measurement: reserved"),
        (sample(metrics={"time": 2.0}), "invalid_fields", "metrics.time: reserved"),
        (sample(metrics={"_anything": 2.0}), "invalid_fields", "metrics._anything: reserved"),
        (sample(metrics={"_field": -1.0}), "invalid_fields", "reserved"),  # before its absurd value
    ],
)
def test_a_bad_sample_is_rejected_alone_with_its_reason(item: Any, reason: str, detail: str) -> None:
    verdict = alone(item)
    assert isinstance(verdict, Rejection), verdict
    assert (verdict.reason, detail in verdict.detail) == (reason, True), verdict


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_non_finite_metric_sinks_only_its_sample(literal: bytes) -> None:
    """A broken sensor sends NaN: the bytes are not strict JSON, but its rack's other samples
    are good and must go on."""
    outcome = parse_record(batch(SERVER, GOOD, SERVER).replace(b"42.5", literal), KEY)
    assert isinstance(outcome, ParsedBatch), outcome
    first, bad, last = outcome.samples
    assert isinstance(first, Sample) and isinstance(last, Sample)
    assert isinstance(bad, Rejection) and bad.reason == "non_finite", bad
    assert outcome.items is not None and outcome.items[1]["device"] == GOOD["device"]


def test_a_rejected_samples_index_and_json_are_known() -> None:
    bad = sample(device="pdu-2", metrics={"power_kw": -3.0})
    parsed = parse_record(batch(GOOD, SERVER, bad, SERVER), KEY)
    assert isinstance(parsed, ParsedBatch) and not parsed.all_valid
    assert [i for i, s in enumerate(parsed.samples) if isinstance(s, Rejection)] == [2]
    assert parsed.items is not None and parsed.items[2] == bad  # the sample as parsed JSON, for its dead letter
    assert parsed.items[0] == GOOD


def test_several_bad_samples_each_get_their_own_reason() -> None:
    parsed = parse_record(batch(sample(seq=-1), GOOD, sample(kind="toaster"), sample(metrics={"cpu_util": 2.0})), KEY)
    assert isinstance(parsed, ParsedBatch)
    reasons = [s.reason if isinstance(s, Rejection) else "ok" for s in parsed.samples]
    assert reasons == ["invalid_fields", "ok", "wrong_type", "absurd_value"]


def test_a_batch_of_only_bad_samples_is_still_a_batch() -> None:
    parsed = parse_record(batch(sample(seq=-1), sample(seq=-2)), KEY)
    assert isinstance(parsed, ParsedBatch) and all(isinstance(s, Rejection) for s in parsed.samples)


@pytest.mark.parametrize("bad", [sample(seq=-1), sample(metrics={"power_kw": -1.0}), 42])
def test_a_good_samples_verdict_does_not_depend_on_its_siblings(bad: Any) -> None:
    alone_ = parse_record(batch(SERVER), KEY)
    beside = parse_record(batch(bad, SERVER), KEY)
    assert isinstance(alone_, ParsedBatch) and isinstance(beside, ParsedBatch)
    assert beside.samples[1] == alone_.samples[0]


def test_a_sequence_number_beyond_64_bits_is_rejected() -> None:
    """State is encoded with orjson, which cannot write integers beyond 64 bits: a seq the
    contract accepts must fit (test_stage shows what an unbounded one does to a checkpoint).
    And its verdict must not depend on its siblings (orjson reads it back as a float)."""
    huge = sample(seq=2**64)
    assert isinstance(alone(huge), Rejection)
    only = parse_record(batch(huge), KEY)
    assert isinstance(only, ParsedBatch) and isinstance(only.samples[0], Rejection)


def test_a_time_influxdb_cannot_store_is_rejected_in_samples_and_watermarks() -> None:
    """Year 9999 parses as a datetime but not as 64-bit nanoseconds: it must be refused here,
    with a reason, not fail the sink's write (or sit in a device's state) later."""
    for ts in ("9999-12-31T23:59:59Z", "1500-01-01T00:00:00Z"):
        verdict = alone(sample(ts=ts))
        assert isinstance(verdict, Rejection) and verdict.reason == "invalid_fields"
        assert "InfluxDB can store" in verdict.detail
        assert record_reason(orjson.dumps({**WATERMARK, "ts": ts}), b"x") == "invalid_fields"
    assert isinstance(alone(sample(ts="2262-04-10T23:59:59Z")), Sample)  # the edge itself is fine


# ---- watermarks -----------------------------------------------------------------------------

WATERMARK = {"schema": "dcpulse.watermark/1", "site": SITE, "producer": "simulate", "ts": "2026-11-22T10:00:09Z"}


def test_a_watermark_record_parses_to_a_watermark() -> None:
    parsed = parse_record(orjson.dumps(WATERMARK), f"{SITE}/~watermark".encode())
    assert parsed == Watermark(site=SITE, producer="simulate", ts=datetime(2026, 11, 22, 10, 0, 9, tzinfo=UTC))


@pytest.mark.parametrize(
    "changes, reason",
    [({"ts": "2026-11-22T10:00:09"}, "invalid_fields"), ({"colour": "red"}, "unknown_field"),
     ({"ts": None}, "wrong_type"), ({"site": "has space"}, "invalid_fields")],
)
def test_a_bad_watermark_is_rejected_whole(changes: dict, reason: str) -> None:
    assert record_reason(orjson.dumps({**WATERMARK, **changes}), b"x") == reason
    no_producer = {k: v for k, v in WATERMARK.items() if k != "producer"}
    assert record_reason(orjson.dumps(no_producer), b"x") == "missing_field"


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
        ("flow_l_min", 0, 1e7), ("volume_l", 0, 1e15),
        ("dp_bar", 0, 1e4), ("pressure_bar", 0, 1e4),
    ],
)
def test_absurd_value_table_edges(name: str, low: float, high: float) -> None:
    assert metric_limits(name) == (low, high)
    assert absurd_values({name: float(low)}) == []  # bounds are included
    assert absurd_values({name: math.nextafter(float(low), -math.inf)}) != []
    verdict = alone(sample(metrics={name: low - 1.0}))
    assert isinstance(verdict, Rejection) and verdict.reason == "absurd_value"
    if math.isfinite(high):
        assert absurd_values({name: float(high)}) == []
        assert absurd_values({name: math.nextafter(float(high), math.inf)}) != []
        verdict = alone(sample(metrics={name: high * 2 + 1}))
        assert isinstance(verdict, Rejection) and verdict.reason == "absurd_value"
    else:
        assert absurd_values({name: 1e300}) == []


@pytest.mark.parametrize("name", ["acc0_throttle", "leak", "pumps_running", "running", "economiser_share",
                                  "mystery", "c", "kw", "util", "energy_kwh_rate"])
def test_unknown_metric_names_are_not_judged(name: str) -> None:
    assert metric_limits(name) is None
    assert isinstance(alone(sample(metrics={name: -1e300})), Sample)


def test_energy_register_reset_to_zero_is_fine_and_every_absurd_metric_is_named() -> None:
    assert isinstance(alone(sample(metrics={"power_kw": 0.0, "energy_kwh": 0.0})), Sample)
    verdict = alone(sample(metrics={"power_kw": -1.0, "inlet_c": 20.0, "cpu_util": 1.5}))
    assert isinstance(verdict, Rejection) and verdict.reason == "absurd_value"
    assert "metrics.power_kw" in verdict.detail and "metrics.cpu_util" in verdict.detail
    assert "inlet_c" not in verdict.detail


def test_table_suffixes_do_not_shadow_each_other() -> None:
    # The first matching suffix decides, so no suffix may end with an earlier one.
    suffixes = [suffix for suffix, _, _ in ABSURD_LIMITS]
    for earlier, later in itertools.combinations(suffixes, 2):
        assert not later.endswith(earlier), (earlier, later)


# ---- the reason is deterministic when several rules are broken ----------------------------------

# Independent breakages of one sample, each on its own field, with the reason each gives alone.
BREAKAGES: dict[str, str] = {
    "drop_ts": "missing_field",
    "extra": "unknown_field",
    "seq_type": "wrong_type",
    "kind_enum": "wrong_type",
    "device_pattern": "invalid_fields",
    "absurd": "absurd_value",
    "nan": "non_finite",  # not strict JSON any more: read leniently, still this sample alone
}


def broken(names: list[str]) -> bytes:
    """A batch of GOOD with the named breakages, fields in the given (shuffled) order."""
    obj = dict(GOOD)
    obj["metrics"] = dict(GOOD["metrics"])
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
            obj["metrics"]["power_kw"] = -5.0
    value = batch(obj)
    if "nan" in names:
        value = value.replace(b"1234.5", b"NaN")
    return value


def reason_of(value: bytes) -> str:
    """The record's reason, or its one sample's."""
    outcome = parse_record(value, KEY)
    if isinstance(outcome, ParsedBatch):
        (outcome,) = outcome.samples
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


def test_each_breakage_alone_gives_its_reason() -> None:
    for name, reason in BREAKAGES.items():
        assert reason_of(broken([name])) == reason, name


@given(st.lists(st.sampled_from(sorted(BREAKAGES)), min_size=1, unique=True), st.randoms())
def test_several_breakages_give_the_highest_priority_reason(names: list[str], rng) -> None:
    expected = min((BREAKAGES[n] for n in names), key=REASON_PRIORITY.index)
    assert reason_of(broken(names)) == expected
    shuffled = list(names)
    rng.shuffle(shuffled)
    assert reason_of(broken(shuffled)) == expected


def test_priority_examples() -> None:
    assert reason_of(broken(["drop_ts", "extra", "seq_type"])) == "missing_field"
    assert reason_of(broken(["extra", "kind_enum", "device_pattern"])) == "unknown_field"
    assert reason_of(broken(["device_pattern", "seq_type"])) == "wrong_type"
    assert reason_of(broken(["drop_ts", "nan"])) == "non_finite"
    assert reason_of(broken(["absurd", "device_pattern"])) == "invalid_fields"
    parsed = parse_record(broken(["device_pattern", "seq_type"]), KEY)
    assert isinstance(parsed, ParsedBatch)
    (verdict,) = parsed.samples
    assert isinstance(verdict, Rejection)
    assert verdict.detail.startswith("seq:") and "device:" in verdict.detail  # the deciding error first


def test_parse_sample_is_the_per_sample_rule() -> None:
    assert parse_sample(GOOD) == Sample.model_validate(GOOD)
    assert parse_sample(sample(metrics={"power_kw": -1.0})) == alone(sample(metrics={"power_kw": -1.0}))


# ---- time, settings, docs ---------------------------------------------------------------------

def test_epoch_ms_floors_and_iso_ms_round_trips() -> None:
    assert epoch_ms(datetime(1970, 1, 1, 0, 0, 1, 999, tzinfo=UTC)) == 1000  # 1.000999 s
    assert epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == -1  # floor, not towards zero
    t = datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)
    assert iso_ms(epoch_ms(t)) == "2026-11-22T10:00:00.250000Z"
    assert datetime.fromisoformat(iso_ms(epoch_ms(t))) == t


def test_validation_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.validation.max_clock_skew_s, s.validation.max_message_bytes) == (60.0, MAX_MESSAGE_BYTES)
    monkeypatch.setenv("DCPULSE_VALIDATION__MAX_CLOCK_SKEW_S", "5.5")
    monkeypatch.setenv("DCPULSE_VALIDATION__MAX_MESSAGE_BYTES", "1024")
    s = Settings()
    assert (s.validation.max_clock_skew_s, s.validation.max_message_bytes) == (5.5, 1024)


def test_the_reason_table_in_the_docstring_is_the_priority_order() -> None:
    import dcpulse.streams.validation as validation

    rows = [line.split("|")[1].strip().strip("`") for line in (validation.__doc__ or "").splitlines()
            if line.startswith("| `")]
    assert tuple(rows) == REASON_PRIORITY
    assert REASONS == set(REASON_PRIORITY)


def test_every_reason_and_suffix_is_documented() -> None:
    schema_doc = (DOCS / "schema.md").read_text()
    section = schema_doc[schema_doc.index("## Dead letter"):]
    for reason in REASON_PRIORITY:
        assert f"`{reason}`" in section, reason
    for suffix, _, _ in ABSURD_LIMITS:
        assert suffix in section, suffix
    assert "## Validation" in (DOCS / "architecture.md").read_text()


# ---- never raises -----------------------------------------------------------------------------

@given(st.binary(max_size=512), st.one_of(st.none(), st.binary(max_size=40)))
def test_arbitrary_bytes_never_raise(payload: bytes, key: bytes | None) -> None:
    assert isinstance(parse_record(payload, key), (ParsedBatch, Watermark, Rejection))


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=20)


@given(JSON)
def test_arbitrary_metrics_never_raise(doc: object) -> None:
    value = json.dumps({"schema": "dcpulse.telemetry/2", "site": SITE, "agent": AGENT,
                        "samples": [SERVER, {**GOOD, "metrics": doc}]}).encode()  # NaN, Infinity, huge ints
    assert isinstance(parse_record(value, KEY), (ParsedBatch, Rejection))


@given(JSON)
def test_arbitrary_samples_never_raise_and_never_sink_a_good_sibling(doc: object) -> None:
    value = json.dumps({"schema": "dcpulse.telemetry/2", "site": SITE, "agent": AGENT,
                        "samples": [SERVER, doc]}, allow_nan=False).encode() if _finite(doc) else None
    if value is None:
        return
    parsed = parse_record(value, KEY)
    assert isinstance(parsed, ParsedBatch), parsed
    assert parsed.samples[0] == Sample.model_validate(SERVER)


def _finite(doc: object) -> bool:
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        return False
    return not _has_big_int(doc)


def _has_big_int(doc: object) -> bool:
    if isinstance(doc, bool):
        return False
    if isinstance(doc, int):
        return not -(2**63) <= doc < 2**64
    if isinstance(doc, dict):
        return any(_has_big_int(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_has_big_int(v) for v in doc)
    return False


def test_a_reserved_metric_name_is_refused_on_the_slow_path_too() -> None:
    """A batch with another bad sample is parsed sample by sample: the reserved name is caught there as well."""
    outcome = parse_record(batch(SERVER, sample(metrics={"time": 1.0}), sample(seq="x")), KEY)
    assert isinstance(outcome, ParsedBatch)
    assert [getattr(s, "reason", None) for s in outcome.samples] == [None, "invalid_fields", "wrong_type"]
    assert "metrics.time: reserved" in outcome.samples[1].detail  # type: ignore[union-attr]
