import base64
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.contract import MAX_MESSAGE_BYTES, Telemetry
from dcpulse.streams.validation import Rejection, dead_letter, validate

GOOD = {
    "schema": "dcpulse.telemetry/1", "site": "hengqin", "hall": "h1", "rack": "r01-k01",
    "device": "pdu-1", "kind": "pdu", "seq": 7, "ts": "2026-11-22T10:00:00.250Z",
    "metrics": {"power_kw": 42.5, "energy_kwh": 1234.5},
}


def raw(**changes: object) -> bytes:
    return orjson.dumps({**GOOD, **changes})


def test_good_record_round_trips() -> None:
    event = validate(raw())
    assert isinstance(event, Telemetry)
    assert event.key == "hengqin/pdu-1"
    assert event.ts.isoformat() == "2026-11-22T10:00:00.250000+00:00"
    assert validate(event.to_bytes()) == event


@pytest.mark.parametrize(
    "value, reason, detail",
    [
        (b"{not json", "malformed_json", ""),
        (None, "malformed_json", "tombstone"),
        (raw(seq="seven"), "invalid_fields", "seq"),
        (raw(seq=-1), "invalid_fields", "seq"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "device"}), "invalid_fields", "device"),
        (raw(metrics={"power_kw": "high"}), "invalid_fields", "metrics.power_kw"),
        (raw(metrics={}), "invalid_fields", "metrics"),
        (raw(ts="2026-11-22T10:00:00"), "invalid_fields", "time zone"),
        (raw(kind="toaster"), "invalid_fields", "kind"),
        (raw(extra_field=1), "invalid_fields", "extra_field"),
        (raw(schema="dcpulse.telemetry/9"), "invalid_fields", "schema"),
        (raw(device="bad device/with slash"), "invalid_fields", "device"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(value: bytes | None, reason: str, detail: str) -> None:
    outcome = validate(value)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert detail in outcome.detail


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_metrics_are_rejected(literal: bytes) -> None:
    payload = raw().replace(b"42.5", literal)
    outcome = validate(payload)
    assert isinstance(outcome, Rejection)
    assert outcome.reason in {"malformed_json", "invalid_fields"}


def test_non_finite_python_floats_are_rejected_by_the_model() -> None:
    with pytest.raises(ValueError, match="finite"):
        Telemetry.model_validate({**GOOD, "metrics": {"power_kw": math.nan}})


def test_oversize_is_rejected_before_parsing() -> None:
    outcome = validate(b"{" + b" " * MAX_MESSAGE_BYTES + b"}")
    assert isinstance(outcome, Rejection) and outcome.reason == "oversize"


def test_dead_letter_keeps_the_original_bytes_and_origin() -> None:
    letter = dead_letter(Rejection("malformed_json", "x"), stage="validate", topic="t",
                         partition=2, offset=99, key=b"k", value=b"\xff\x00garbage")
    assert base64.b64decode(letter.original_value_b64) == b"\xff\x00garbage"
    assert base64.b64decode(letter.original_key_b64 or "") == b"k"
    decoded = orjson.loads(letter.to_bytes())
    assert decoded["schema"] == "dcpulse.deadletter/1"
    assert (decoded["source_topic"], decoded["source_partition"], decoded["source_offset"]) == ("t", 2, 99)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    assert isinstance(validate(payload), (Telemetry, Rejection))
