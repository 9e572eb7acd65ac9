"""What a replay sends, in which order, to which partition, and when: pure functions, so the live
replay (`recording.replay`) and the offline reference (`recording.replay_plan`) see the same
per-partition sequences.

`plan_sends` takes the recorded records and returns the sends:
1. the recorded partitions merged by timestamp, each keeping its recorded order
   (`merge_by_timestamp`);
2. per record, in that order:
   - a v2 watermark (`dcpulse.watermark/1`): its first copy is broadcast to every partition of
     the destination topic, later copies of the same (topic, site, ts) are skipped, so a replay
     into a topic with another partition count still gives every partition every watermark once;
   - a v1 telemetry record (`dcpulse.telemetry/1`, one device sample, key = site): converted to a
     one-sample v2 batch keyed by its agent (`agents.agent_for`); when a site's Kafka timestamp
     moves forward (a new tick), a watermark for the site is broadcast first, WATERMARK_MARGIN_MS
     before the new timestamp, as a v2 producer would have sent after the previous tick;
   - anything else (v2 batches, bad input) unchanged, to its key's partition by the default
     partitioner (murmur2); a record without a key keeps its recorded partition number (modulo
     the destination's count).
`pacing_schedule` then says when each send is due at a given speed.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError

from dcpulse.contract import (
    TELEMETRY_SCHEMA,
    TELEMETRY_V1_SCHEMA,
    Watermark,
    agent_key,
    watermark_key,
)
from dcpulse.producers.agents import WATERMARK_MARGIN_MS, agent_for
from dcpulse.producers.publisher import KeyPartitioner

if TYPE_CHECKING:  # recording.py imports this module
    from dcpulse.producers.recording import RecordedMessage

WATERMARK_KEY_SUFFIX = watermark_key("").encode()
_V1_MARK = f'"{TELEMETRY_V1_SCHEMA}"'.encode()


def is_watermark_key(key: bytes | None) -> bool:
    return key is not None and key.endswith(WATERMARK_KEY_SUFFIX)


def merge_by_timestamp(messages: Iterable[RecordedMessage]) -> list[RecordedMessage]:
    """The replay order of `messages` (in file order): partitions merged by timestamp.

    A k-way merge over one queue per (topic, partition): the next record is always the head of
    the queue whose head has the smallest (timestamp, is a watermark, file position). Records of
    one (topic, partition) are never reordered, so per-partition and so per-key order survive
    even when timestamps inside a partition go backwards (producer clock skew); such a record
    simply waits for its predecessors. A record without a timestamp (-1) sorts first once it is
    at the head of its queue, so it goes right after the record before it in its partition.

    Why: a recording made from the beginning holds partitions one fetch batch at a time, so file
    order would send one partition's whole span before the next partition's (already overdue)
    records. With monotonic timestamps per partition the result is sorted by timestamp. A
    watermark shares its tick's timestamp but follows the tick's batches on every partition;
    putting watermarks after the other records of their timestamp makes the first copy of each
    come after every batch of its tick, on all partitions, so broadcasting it there is true.
    """
    queues: dict[tuple[str, int], deque[tuple[int, RecordedMessage]]] = {}
    for position, message in enumerate(messages):
        queues.setdefault((message.topic, message.partition), deque()).append((position, message))

    def head(key: tuple[str, int]) -> tuple[int, bool, int, tuple[str, int]]:
        # Positions are unique, so queue keys never compare.
        position, message = queues[key][0]
        return message.timestamp_ms, is_watermark_key(message.key), position, key

    heap = [head(key) for key in queues]
    heapq.heapify(heap)
    merged: list[RecordedMessage] = []
    while heap:
        key = heap[0][3]
        queue = queues[key]
        merged.append(queue.popleft()[1])
        if queue:
            heapq.heapreplace(heap, head(key))
        else:
            heapq.heappop(heap)
    return merged


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """One record a replay produces. `topic` is the recorded topic (the replay maps it to its
    destination); `source_offset` is -1 for a synthesised watermark."""

    topic: str
    partition: int
    timestamp_ms: int  # -1: none recorded, the broker stamps it
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    source_offset: int


@dataclass
class ReplayPlan:
    sends: list[PlannedSend] = field(default_factory=list)
    converted: int = 0  # v1 records turned into v2 batches
    watermarks: int = 0  # distinct watermarks broadcast (recorded or synthesised)
    copies_skipped: int = 0  # recorded watermark copies not sent again


def _v1_record(value: bytes | None) -> dict | None:
    """The decoded record if `value` is v1 telemetry JSON (an object of that schema with a site)."""
    if value is None or _V1_MARK not in value:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("schema") == TELEMETRY_V1_SCHEMA and isinstance(obj.get("site"), str):
        return obj
    return None


def convert_v1(record: dict) -> tuple[bytes, bytes]:
    """A v1 record (one device sample) as a one-sample v2 batch: (key, value). Every field but
    `schema` and `site` moves into the sample unchanged, so a bad v1 sample stays bad for the
    same reason, and now alone."""
    site = record["site"]
    sample = {k: v for k, v in record.items() if k not in ("schema", "site")}
    agent = agent_for(sample.get("hall"), sample.get("rack"))
    batch = {"schema": TELEMETRY_SCHEMA, "site": site, "agent": agent, "samples": [sample]}
    return agent_key(site, agent).encode(), orjson.dumps(batch)


def synthesised_watermark(site: str, tick_ms: int) -> bytes:
    """The watermark a v2 producer would have sent before a v1 site's tick at `tick_ms`."""
    ts = datetime.fromtimestamp((tick_ms - WATERMARK_MARGIN_MS) / 1000, UTC)
    return Watermark(site=site, producer="replay", ts=ts).to_bytes()


def _watermark(message: RecordedMessage) -> Watermark | None:
    if not is_watermark_key(message.key) or message.value is None:
        return None
    try:
        return Watermark.model_validate_json(message.value)
    except ValidationError:
        return None


def plan_sends(messages: Iterable[RecordedMessage], partitions: Mapping[str, int]) -> ReplayPlan:
    """Every record a replay sends, in send order (module docstring). `partitions`: recorded
    topic -> partition count of the topic it is replayed into."""
    partitioners = {topic: KeyPartitioner(count) for topic, count in partitions.items()}
    plan = ReplayPlan()
    seen_watermarks: set[tuple[str, str, datetime]] = set()
    v1_tick: dict[tuple[str, str], int] = {}

    def broadcast(m: RecordedMessage, key: bytes, value: bytes, headers: tuple, offset: int) -> None:
        plan.watermarks += 1
        plan.sends.extend(PlannedSend(m.topic, p, m.timestamp_ms, key, value, headers, offset)
                          for p in range(partitioners[m.topic].partitions))

    for m in merge_by_timestamp(messages):
        mark = _watermark(m)
        if mark is not None:
            identity = (m.topic, mark.site, mark.ts)
            if identity in seen_watermarks:
                plan.copies_skipped += 1
            else:
                seen_watermarks.add(identity)
                broadcast(m, m.key, m.value, m.headers, m.offset)
            continue
        key, value = m.key, m.value
        v1 = _v1_record(value)
        if v1 is not None:
            plan.converted += 1
            key, value = convert_v1(v1)
            site = v1["site"]
            previous = v1_tick.get((m.topic, site))
            if m.timestamp_ms >= 0 and (previous is None or m.timestamp_ms > previous):
                if previous is not None:
                    broadcast(m, watermark_key(site).encode(), synthesised_watermark(site, m.timestamp_ms), (), -1)
                v1_tick[(m.topic, site)] = m.timestamp_ms
        partitioner = partitioners[m.topic]
        partition = m.partition % partitioner.partitions if key is None else partitioner(key)
        plan.sends.append(PlannedSend(m.topic, partition, m.timestamp_ms, key, value, m.headers, m.offset))
    return plan


def parse_speed(text: str) -> float | None:
    """'max' -> None (as fast as possible); '1', '10', '2.5', '10x' -> that factor (> 0)."""
    cleaned = text.strip().lower()
    if cleaned == "max":
        return None
    cleaned = cleaned.removesuffix("x")  # after the "max" check: "max" ends in x too
    try:
        speed = float(cleaned)
    except ValueError:
        raise ValueError(f"speed must be a number > 0 or 'max', got {text!r}") from None
    return check_speed(speed)


def check_speed(speed: float | None) -> float | None:
    if speed is not None and not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a finite number > 0 or None (max), got {speed!r}")
    return speed


def due_offset_s(timestamp_ms: int, first_timestamp_ms: int, speed: float | None) -> float:
    """Seconds after replay start at which a record is due.

    Recorded gaps divided by `speed`; None (max) means everything is due at once. A record older
    than the first one (producer clock skew inside a partition) is due immediately, never "in
    the past".
    """
    check_speed(speed)
    if speed is None or timestamp_ms < 0 or first_timestamp_ms < 0:
        return 0.0
    return max(0, timestamp_ms - first_timestamp_ms) / 1000.0 / speed


def pacing_schedule(timestamps_ms: Iterable[int], speed: float | None) -> list[float]:
    """Send offsets (s after start) for records with these timestamps, in replay order.

    The base is the first known timestamp (>= 0); each record is due at its gap from the base
    divided by `speed`. The schedule never goes backwards: a record older than one already sent
    (clock skew inside a partition) is sent at once, right after it, without waiting. A record
    without a timestamp (-1) is due right after the record before it, so it neither stalls nor
    jumps the replay.
    """
    check_speed(speed)
    first: int | None = None
    schedule: list[float] = []
    previous = 0.0
    for ts in timestamps_ms:
        if ts >= 0 and first is None:
            first = ts
        due = previous if ts < 0 or first is None else due_offset_s(ts, first, speed)
        due = max(due, previous)
        schedule.append(due)
        previous = due
    return schedule


def shift_delta_ms(first_timestamp_ms: int, now_ms: int) -> int:
    """What to add to every timestamp so that the first becomes `now_ms`."""
    return now_ms - first_timestamp_ms


def shift_timestamps(timestamps_ms: Sequence[int], now_ms: int) -> list[int]:
    """Shift so the first known timestamp equals `now_ms`, keeping every gap. -1 stays -1."""
    first = next((ts for ts in timestamps_ms if ts >= 0), None)
    if first is None:
        return list(timestamps_ms)
    delta = shift_delta_ms(first, now_ms)
    return [ts + delta if ts >= 0 else ts for ts in timestamps_ms]
