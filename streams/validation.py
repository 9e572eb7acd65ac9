"""Validation stage (pure): raw Kafka bytes -> a Telemetry event or a reasoned rejection."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from dcpulse.contract import MAX_MESSAGE_BYTES, DeadLetter, Telemetry, utc_now


@dataclass(frozen=True)
class Rejection:
    reason: str  # stable, countable: oversize | malformed_json | invalid_fields
    detail: str


def validate(raw: bytes | None) -> Telemetry | Rejection:
    if raw is None:
        return Rejection("malformed_json", "empty message value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection("oversize", f"{len(raw)} bytes > limit {MAX_MESSAGE_BYTES}")
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", str(exc)[:300])
    try:
        return Telemetry.from_bytes(raw)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        return Rejection("invalid_fields", fields[:1000])


def dead_letter(
    rejection: Rejection, *, stage: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None,
) -> DeadLetter:
    return DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail,
        stage=stage,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        original_key_b64=base64.b64encode(key).decode() if key is not None else None,
        original_value_b64=base64.b64encode(value or b"").decode(),
        rejected_at=utc_now(),
    )
