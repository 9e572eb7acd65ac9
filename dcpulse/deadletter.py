"""Rejections and the dead letters that carry them, shared by the stream stage and the sinks."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from dcpulse.contract import DEADLETTER_ORIGINAL_BYTES, DeadLetter, utc_now


@dataclass(frozen=True)
class Rejection:
    reason: str  # stable, countable (docs/schema.md lists them)
    detail: str


def dead_letter(rejection: Rejection, *, stage: str, topic: str, partition: int, offset: int,
                key: bytes | None, value: bytes | None, sample_index: int | None = None) -> DeadLetter:
    """The dead letter of a record, or of one sample of it (`sample_index`, `value` = that
    sample's JSON). The original is kept up to `DEADLETTER_ORIGINAL_BYTES`, with its full size
    and sha256, so the letter always fits a Kafka message whatever the broker accepted."""
    original = value or b""
    kept = original[:DEADLETTER_ORIGINAL_BYTES]
    return DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail[:2000],
        stage=stage,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        sample_index=sample_index,
        original_key_b64=base64.b64encode(key[:1024]).decode() if key is not None else None,
        original_value_b64=base64.b64encode(kept).decode(),
        original_size=len(original),
        original_sha256=hashlib.sha256(original).hexdigest(),
        original_truncated=len(kept) < len(original),
        rejected_at=utc_now(),
    )
