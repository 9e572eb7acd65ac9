"""Record Kafka topics to a file and replay them: the entry point for test harnesses.

File format "dcpulse.recording/1" (see docs/recording.md): gzip-compressed JSON lines. Line 1
is a header; every other line is one Kafka record with key, value and header values in base64,
because records are arbitrary bytes (malformed messages are recorded too).

The first half of this module is pure (encoding, validation, reading, writing) and is
unit-tested without a broker; what a replay sends, in which order and when, is
`replay_order.py` (also pure), and `replay_plan` gives it per partition for offline references.
`record` and `replay` at the end do the Kafka I/O.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import signal
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from dcpulse.kafka_clients import KafkaAccess
from dcpulse.kafka_clients import consumer as kafka_consumer
from dcpulse.kafka_clients import producer as kafka_producer
from dcpulse.log import get_logger
from dcpulse.producers.publisher import PartitionRecord
from dcpulse.producers.replay_order import check_speed, pacing_schedule, plan_sends, shift_delta_ms

log = get_logger(__name__)

FORMAT = "dcpulse.recording/1"
TOOL = "dcpulse"

# progress(records so far, seconds since start); called a few times a second at most.
Progress = Callable[[int, float], None]
_PROGRESS_EVERY_S = 0.2


# --------------------------------------------------------------------------------------------
# Pure part: records, header, reading and writing, the replay plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedMessage:
    """One Kafka record as recorded. `key`/`value` None = no key / tombstone."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # -1 when the broker reported no timestamp
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True)
class RecordingHeader:
    format: str
    topics: tuple[str, ...]
    recorded_at: datetime
    tool: str


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string or null, got {type(text).__name__}")
    try:
        # validate=True: a corrupted character is an error, not silently skipped.
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from None


def encode_record(message: RecordedMessage) -> bytes:
    """One JSON line (without the newline) for `message`."""
    return orjson.dumps({
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp_ms": message.timestamp_ms,
        "key_b64": _b64(message.key),
        "value_b64": _b64(message.value),
        "headers": [[name, _b64(value)] for name, value in message.headers],
    })


def _require_int(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    # bool is an int subclass; true/false in the file is corruption, not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {name!r} must be an integer, got {value!r}")
    return value


def decode_record(line: bytes | str) -> RecordedMessage:
    """Parse one record line. Raises ValueError saying what is wrong (without the line number:
    the caller knows it)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("topic", "partition", "offset", "timestamp_ms", "key_b64",
                           "value_b64", "headers") if k not in obj]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    topic = obj["topic"]
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"field 'topic' must be a non-empty string, got {topic!r}")
    raw_headers = obj["headers"]
    if not isinstance(raw_headers, list):
        raise ValueError("field 'headers' must be a list of [name, value_b64] pairs")
    headers: list[tuple[str, bytes | None]] = []
    for index, pair in enumerate(raw_headers):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"headers[{index}] must be [name, value_b64], got {pair!r}")
        headers.append((pair[0], _unb64(pair[1], f"headers[{index}] value")))
    return RecordedMessage(
        topic=topic,
        partition=_require_int(obj, "partition"),
        offset=_require_int(obj, "offset"),
        timestamp_ms=_require_int(obj, "timestamp_ms"),
        key=_unb64(obj["key_b64"], "key_b64"),
        value=_unb64(obj["value_b64"], "value_b64"),
        headers=tuple(headers),
    )


def utc_iso(moment: datetime) -> str:
    """ISO-8601 UTC with a Z and millisecond precision, e.g. 2026-11-22T10:00:00.250Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_header(topics: Sequence[str], recorded_at: datetime) -> bytes:
    return orjson.dumps({"format": FORMAT, "topics": list(topics),
                         "recorded_at": utc_iso(recorded_at), "tool": TOOL})


def parse_header(line: bytes | str) -> RecordingHeader:
    """Validate the first line of a recording. Raises ValueError on anything but format /1."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"header is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise ValueError("header is not a dcpulse recording header (no 'format' field)")
    if obj["format"] != FORMAT:
        raise ValueError(f"unsupported recording format {obj['format']!r}; expected {FORMAT!r}")
    topics = obj.get("topics")
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise ValueError("header field 'topics' must be a list of topic names")
    recorded_at = obj.get("recorded_at")
    try:
        moment = datetime.fromisoformat(recorded_at) if isinstance(recorded_at, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"header field 'recorded_at' must be ISO-8601 UTC, got {recorded_at!r}")
    tool = obj.get("tool")
    if not isinstance(tool, str):
        raise ValueError("header field 'tool' must be a string")
    return RecordingHeader(FORMAT, tuple(topics), moment.astimezone(UTC), tool)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of a gzip file; gzip damage becomes a ValueError."""
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                yield number, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        if number == 0:
            raise ValueError(f"{path}: not a gzip-compressed {FORMAT} recording: {exc}") from None
        # A truncated or damaged gzip stream cannot name a line, only where it stopped.
        raise ValueError(f"{path}: corrupt gzip data after line {number}: {exc}") from None


def read_header(path: Path) -> RecordingHeader:
    """The validated header of the recording at `path`."""
    for number, line in _lines(Path(path)):
        try:
            return parse_header(line)
        except ValueError as exc:
            raise ValueError(f"{path}: line {number}: {exc}") from None
    raise ValueError(f"{path}: empty file, not a {FORMAT} recording")


def iter_recording(path: Path) -> Iterator[RecordedMessage]:
    """Every record of the recording at `path`, in file order, after validating the header.

    Raises ValueError naming the file and line number on a wrong format or a corrupt line.
    Blank lines are not allowed (the writer never produces them).
    """
    lines = _lines(Path(path))
    first = next(lines, None)
    if first is None:
        raise ValueError(f"{path}: empty file, not a {FORMAT} recording")
    try:
        parse_header(first[1])
    except ValueError as exc:
        raise ValueError(f"{path}: line 1: {exc}") from None
    for number, line in lines:
        try:
            message = decode_record(line)
        except ValueError as exc:
            raise ValueError(f"{path}: line {number}: {exc}") from None
        yield message


class _AtomicGzipLines:
    """Write a recording to a hidden temp file next to `path`, rename on commit.

    The rename is what makes the file complete: a crash or error mid-way leaves no file under
    the final name (the temp file is removed), so a partial recording is never replayed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._raw: IO[bytes] = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        # mtime=0: the same records give the same bytes (the timestamp lives in the header).
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)

    def write_line(self, line: bytes) -> None:
        self._gz.write(line + b"\n")

    def commit(self) -> int:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())  # the data is on disk before the name says "complete"
        self._raw.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        for stream in (self._gz, self._raw):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - cleaning up after an earlier error
                pass
        self.tmp.unlink(missing_ok=True)


def write_recording(
    path: Path, topics: Sequence[str], messages: Iterable[RecordedMessage],
    recorded_at: datetime | None = None,
) -> int:
    """Write `messages` as a complete recording (atomically). Returns the number written.

    For harnesses that build synthetic recordings, and for tests.
    """
    out = _AtomicGzipLines(path)
    count = 0
    try:
        out.write_line(encode_header(topics, recorded_at or datetime.now(UTC)))
        for message in messages:
            out.write_line(encode_record(message))
            count += 1
    except BaseException:
        out.abort()
        raise
    out.commit()
    return count


def parse_topic_map(pairs: Iterable[str]) -> dict[str, str]:
    """['SRC=DST', ...] -> {SRC: DST}; a repeated SRC or an empty side is an error."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ValueError(f"topic map entries look like SRC=DST, got {pair!r}")
        if src in mapping:
            raise ValueError(f"topic {src!r} is mapped twice")
        mapping[src] = dst
    return mapping


def replay_plan(source: Path | str | Iterable[RecordedMessage], partitions: int,
                topic: str | None = None) -> list[PartitionRecord]:
    """What a replay of `source` (a recording file, or its records in file order) writes into a
    topic of `partitions` partitions: (partition, Kafka timestamp in ms or None, key, value), in
    send order, so in each partition's order. `replay` sends exactly this (`plan_sends`), with
    the timestamps moved by --shift-to-now if asked. `topic`: which recorded topic (default: the
    only one)."""
    messages = list(iter_recording(Path(source)) if isinstance(source, str | Path) else source)
    topics = sorted({m.topic for m in messages})
    if topic is None and len(topics) > 1:
        raise ValueError(f"the recording holds several topics ({', '.join(topics)}): name one")
    chosen = topic or (topics[0] if topics else "")
    plan = plan_sends([m for m in messages if m.topic == chosen], {chosen: partitions})
    return [(s.partition, s.timestamp_ms if s.timestamp_ms >= 0 else None, s.key, s.value) for s in plan.sends]


class _Throttle:
    """Calls progress at most every _PROGRESS_EVERY_S, so a fast loop does not spend its time
    redrawing."""

    def __init__(self, progress: Progress | None, started: float) -> None:
        self.progress = progress
        self.started = started
        self.last = 0.0

    def __call__(self, count: int, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self.last >= _PROGRESS_EVERY_S:
            self.last = now
            self.progress(count, now - self.started)


# --------------------------------------------------------------------------------------------
# Kafka I/O: record and replay
# --------------------------------------------------------------------------------------------


@contextmanager
def _ctrl_c_as_flag() -> Iterator[threading.Event]:
    """While active, Ctrl-C sets the yielded event instead of raising KeyboardInterrupt.

    A KeyboardInterrupt can land in the middle of a gzip write and leave a broken stream; a flag
    checked between records cannot. Outside the main thread signals cannot be caught, so there
    the loops fall back to catching KeyboardInterrupt.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class RecordStats:
    path: Path
    records: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    stopped_by: str = ""  # duration | idle | max_records | interrupted
    file_bytes: int = 0


def record(
    kafka: KafkaAccess,
    topics: list[str],
    path: Path,
    *,
    from_beginning: bool = True,
    duration_s: float | None = None,
    idle_timeout_s: float | None = 10.0,
    max_records: int | None = None,
    progress: Progress | None = None,
) -> RecordStats:
    """Record every partition of `topics` to `path` (format dcpulse.recording/1).

    Manual assignment, no consumer group: recording never moves anyone's committed offsets.
    Stops after `duration_s`, after `idle_timeout_s` without a new record, after `max_records`,
    or on Ctrl-C; the file is complete (renamed into place) in all four cases. On any other
    error nothing is left under `path`.
    """
    from kafka import TopicPartition

    if not topics:
        raise ValueError("record needs at least one topic")
    if max_records is not None and max_records < 1:
        raise ValueError("max_records must be >= 1")
    path = Path(path)
    consumer = kafka_consumer(kafka, "dcpulse-recorder",
                              auto_offset_reset="earliest" if from_beginning else "latest")
    stats = RecordStats(path=path)
    out: _AtomicGzipLines | None = None
    try:
        partitions: list[Any] = []
        for topic in dict.fromkeys(topics):
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise ValueError(f"topic {topic!r} does not exist on {kafka.bootstrap}")
            partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        for tp in partitions:
            # Resolve positions now, so "from the end" means the end at start time, not at the
            # first poll.
            consumer.position(tp)

        out = _AtomicGzipLines(path)
        started = time.monotonic()
        out.write_line(encode_header(list(dict.fromkeys(topics)), datetime.now(UTC)))
        tick = _Throttle(progress, started)
        last_record = started
        log.info("recording", topics=topics, partitions=len(partitions), path=str(path),
                 from_beginning=from_beginning)
        try:
            with _ctrl_c_as_flag() as ctrl_c:
                while True:
                    if ctrl_c.is_set():
                        raise KeyboardInterrupt
                    now = time.monotonic()
                    if duration_s is not None and now - started >= duration_s:
                        stats.stopped_by = "duration"
                        break
                    if idle_timeout_s is not None and now - last_record >= idle_timeout_s:
                        stats.stopped_by = "idle"
                        break
                    # Short polls so the stop conditions are checked several times a second.
                    wait_s = 0.2
                    if duration_s is not None:
                        wait_s = min(wait_s, max(0.0, started + duration_s - now))
                    batches = consumer.poll(timeout_ms=max(1, int(wait_s * 1000)))
                    for batch in batches.values():
                        for msg in batch:
                            out.write_line(encode_record(RecordedMessage(
                                topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                timestamp_ms=msg.timestamp if msg.timestamp is not None else -1,
                                key=msg.key, value=msg.value,
                                headers=tuple((k, v) for k, v in (msg.headers or [])),
                            )))
                            stats.records += 1
                            stats.per_topic[msg.topic] += 1
                            last_record = time.monotonic()
                            if max_records is not None and stats.records >= max_records:
                                break
                        if max_records is not None and stats.records >= max_records:
                            break
                    tick(stats.records)
                    if max_records is not None and stats.records >= max_records:
                        stats.stopped_by = "max_records"
                        break
        except KeyboardInterrupt:
            # Ctrl-C is a normal way to end a recording: every line written so far is whole.
            stats.stopped_by = "interrupted"
        stats.duration_s = time.monotonic() - started
        stats.file_bytes = out.commit()
        out = None
        tick(stats.records, force=True)
        log.info("recorded", records=stats.records, stopped_by=stats.stopped_by,
                 seconds=round(stats.duration_s, 3), path=str(path))
        return stats
    finally:
        if out is not None:
            out.abort()
        consumer.close(autocommit=False)


@dataclass
class ReplayStats:
    path: Path
    total: int = 0  # records in the file
    submitted: int = 0  # handed to the producer (a watermark once per partition)
    delivered: int = 0  # acknowledged by the broker (acks=all)
    converted: int = 0  # v1 records sent as v2 batches
    watermarks: int = 0  # distinct watermarks broadcast, recorded or synthesised for v1
    per_topic: Counter[str] = field(default_factory=Counter)  # delivered, by destination topic
    errors: Counter[str] = field(default_factory=Counter)  # failed, by error type
    failed_per_topic: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def _existing_topics(kafka: KafkaAccess) -> set[str]:
    consumer = kafka_consumer(kafka, "dcpulse-replay-meta")
    try:
        return set(consumer.topics())
    finally:
        consumer.close(autocommit=False)


def replay(
    kafka: KafkaAccess,
    path: Path,
    *,
    speed: float | None,
    topic_map: dict[str, str] | None = None,
    shift_to_now: bool = False,
    progress: Progress | None = None,
    flush_timeout_s: float = 60.0,
) -> ReplayStats:
    """Republish the recording at `path` with key, value, headers, timestamp.

    What is sent, to which partition and in which order is the plan of `plan_sends` for the
    destination topics' partition counts (replay_order.py: partitions merged by timestamp,
    watermarks broadcast once to every partition, v1 records converted): each send names its
    partition, so a replay writes exactly `replay_plan`'s per-partition sequences. speed=None: as
    fast as possible; speed=N: the recorded timestamps divided by N (`pacing_schedule`). With
    `shift_to_now` the first record is stamped with the replay start time, the rest keep their
    recorded gaps. acks=all + idempotence, so per-partition order survives retries. Delivery
    errors are counted in `errors`, never dropped; ends with a flush. The whole file is read
    (and held in memory) before the first send, so a corrupt file sends nothing.
    """
    from kafka.errors import KafkaError

    check_speed(speed)
    path = Path(path)
    topic_map = dict(topic_map or {})
    header = read_header(path)
    # Read the whole file before sending anything: a corrupt line half-way must not leave the
    # destination with half a replay. The merge needs every partition's records anyway.
    messages = list(iter_recording(path))
    recorded_topics = set(header.topics) | {m.topic for m in messages}
    unknown = sorted(set(topic_map) - set(header.topics))
    if unknown:
        raise ValueError(f"--topic-map names topics not in the recording: {', '.join(unknown)} "
                         f"(recorded: {', '.join(header.topics)})")
    destinations = {t: topic_map.get(t, t) for t in recorded_topics}
    # The broker does not auto-create topics: without this check every send would block for
    # max_block_ms and then fail one by one.
    missing = sorted(set(destinations.values()) - _existing_topics(kafka))
    if missing:
        raise ValueError(f"destination topic(s) do not exist on {kafka.bootstrap}: {', '.join(missing)}")

    stats = ReplayStats(path=path, total=len(messages))
    lock = threading.Lock()

    # kafka-python calls callback(*bound_args, result): the bound arguments come first.
    def delivered(topic: str, _metadata: Any) -> None:
        with lock:
            stats.delivered += 1
            stats.per_topic[topic] += 1

    def failed(topic: str, offset: int, error: BaseException) -> None:
        with lock:
            stats.errors[type(error).__name__] += 1
            stats.failed_per_topic[topic] += 1
        log.error("replay delivery failed", topic=topic, source_offset=offset, error=repr(error))

    # Recorded records may be larger than the live producers' limit (bad input on purpose).
    producer = kafka_producer(kafka, "dcpulse-replay", linger_ms=5 if speed is not None else 20,
                              max_request_size=8 * 1024 * 1024)
    try:
        plan = plan_sends(messages, {t: len(producer.partitions_for(d)) for t, d in destinations.items()})
        stats.converted, stats.watermarks = plan.converted, plan.watermarks
        schedule = pacing_schedule([s.timestamp_ms for s in plan.sends], speed)
        first_ts = next((s.timestamp_ms for s in plan.sends if s.timestamp_ms >= 0), None)
        started = time.monotonic()
        tick = _Throttle(progress, started)
        delta_ms = 0
        if shift_to_now and first_ts is not None:
            # The first timed record is due at once (only untimed ones can precede it): "now".
            delta_ms = shift_delta_ms(first_ts, int(time.time() * 1000))
        try:
            with _ctrl_c_as_flag() as ctrl_c:
                for send, due_s in zip(plan.sends, schedule, strict=True):
                    if ctrl_c.is_set():
                        raise KeyboardInterrupt
                    due = started + due_s
                    # Sleep in short steps so progress keeps updating across long gaps. The
                    # schedule never goes backwards: an overdue record goes out at once.
                    while (delay := due - time.monotonic()) > 0 and not ctrl_c.is_set():
                        tick(stats.submitted)
                        time.sleep(min(delay, _PROGRESS_EVERY_S))
                    topic = destinations[send.topic]
                    timestamp = send.timestamp_ms + delta_ms if send.timestamp_ms >= 0 else None
                    # kafka-python only sends bytes header values; Kafka's null header value
                    # becomes empty bytes.
                    headers = [(name, value if value is not None else b"") for name, value in send.headers]
                    try:
                        future = producer.send(topic, key=send.key, value=send.value, partition=send.partition,
                                               headers=headers, timestamp_ms=timestamp)
                    except KafkaError as exc:
                        # Refused before it was queued (e.g. too large): counted like a failed delivery.
                        failed(topic, send.source_offset, exc)
                    else:
                        future.add_callback(delivered, topic)
                        future.add_errback(failed, topic, send.source_offset)
                    stats.submitted += 1
                    tick(stats.submitted)
        except KeyboardInterrupt:
            # Stop sending, but still deliver (and count) what was already handed over.
            stats.interrupted = True
        try:
            producer.flush(timeout=flush_timeout_s)
        except KafkaError as exc:
            log.error("replay flush did not complete", error=repr(exc))
        with lock:
            # Anything neither acknowledged nor failed after the flush is reported, not lost.
            unresolved = stats.submitted - stats.delivered - sum(stats.errors.values())
            if unresolved > 0:
                stats.errors["Unacknowledged"] += unresolved
        stats.duration_s = time.monotonic() - started
        tick(stats.submitted, force=True)
    finally:
        producer.close(timeout=10)
    log.info("replayed", submitted=stats.submitted, delivered=stats.delivered, converted=stats.converted,
             watermarks=stats.watermarks, failed=stats.failed, seconds=round(stats.duration_s, 3), path=str(path))
    return stats
