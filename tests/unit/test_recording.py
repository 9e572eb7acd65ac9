"""The pure part of record/replay: file format, validation, replay order, pacing, timestamp
shifting."""

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from dcpulse.producers.recording import (
    FORMAT,
    RecordedMessage,
    decode_record,
    due_offset_s,
    encode_header,
    encode_record,
    iter_recording,
    merge_by_timestamp,
    pacing_schedule,
    parse_header,
    parse_speed,
    parse_topic_map,
    read_header,
    shift_delta_ms,
    shift_timestamps,
    write_recording,
)

BINARY = bytes(range(256)) + b"\xff\xfe\x80 not utf-8 \xc3\x28"
AT = datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)


def msg(offset: int = 0, ts: int = 1_700_000_000_000, **changes: object) -> RecordedMessage:
    fields: dict[str, object] = dict(topic="dcpulse.telemetry.v1", partition=2, offset=offset,
                                     timestamp_ms=ts, key=b"site/dev-1", value=b'{"a": 1}',
                                     headers=(("trace", b"abc"),))
    fields.update(changes)
    return RecordedMessage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("message", [
    msg(),
    msg(value=BINARY, key=BINARY[:17]),
    msg(key=None),
    msg(value=None),  # tombstone
    msg(key=None, value=None, headers=()),
    msg(headers=(("h1", b"\x00\x01"), ("h1", b"dup name kept"), ("empty", b""), ("null", None))),
    msg(ts=-1),
])
def test_encode_decode_round_trip(message: RecordedMessage) -> None:
    line = encode_record(message)
    assert b"\n" not in line  # one record is exactly one line
    assert decode_record(line) == message
    assert decode_record(line.decode()) == message


def test_encoded_line_uses_documented_fields() -> None:
    obj = orjson.loads(encode_record(msg(key=None, value=b"\xff", headers=(("h", b"\x00"),))))
    assert obj == {"topic": "dcpulse.telemetry.v1", "partition": 2, "offset": 0,
                   "timestamp_ms": 1_700_000_000_000, "key_b64": None, "value_b64": "/w==",
                   "headers": [["h", "AA=="]]}


@pytest.mark.parametrize("line, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"topic": "t"}', "missing field"),
    (orjson.dumps({**orjson.loads(encode_record(msg())), "value_b64": "!!not base64!!"}), "value_b64"),
    (orjson.dumps({**orjson.loads(encode_record(msg())), "offset": "7"}), "offset"),
    (orjson.dumps({**orjson.loads(encode_record(msg())), "partition": True}), "partition"),
    (orjson.dumps({**orjson.loads(encode_record(msg())), "headers": [["h"]]}), "headers[0]"),
])
def test_decode_rejects_bad_lines(line: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_record(line)


def test_header_round_trip() -> None:
    header = parse_header(encode_header(["a", "b"], AT))
    assert header.format == FORMAT
    assert header.topics == ("a", "b")
    assert header.recorded_at == AT
    assert header.tool == "dcpulse"
    assert orjson.loads(encode_header(["a"], AT))["recorded_at"] == "2026-11-22T10:00:00.250Z"


@pytest.mark.parametrize("header, words", [
    ({"format": "dcpulse.recording/2", "topics": ["a"], "recorded_at": "2026-01-01T00:00:00Z",
      "tool": "dcpulse"}, "unsupported recording format 'dcpulse.recording/2'"),
    ({"topics": ["a"]}, "no 'format' field"),
    ({"format": FORMAT, "topics": "a", "recorded_at": "2026-01-01T00:00:00Z", "tool": "x"}, "topics"),
    ({"format": FORMAT, "topics": ["a"], "recorded_at": "yesterday", "tool": "x"}, "recorded_at"),
    ({"format": FORMAT, "topics": ["a"], "recorded_at": "2026-01-01T00:00:00", "tool": "x"},
     "recorded_at"),  # no zone
    ({"format": FORMAT, "topics": ["a"], "recorded_at": "2026-01-01T00:00:00Z"}, "tool"),
])
def test_header_validation_errors(header: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_header(orjson.dumps(header))


def _gzip_lines(path: Path, *lines: bytes) -> Path:
    with gzip.open(path, "wb") as out:
        for line in lines:
            out.write(line + b"\n")
    return path


def test_file_round_trip_keeps_order_and_bytes(tmp_path: Path) -> None:
    messages = [msg(offset=i, ts=1_700_000_000_000 + i * 10, value=BINARY + bytes([i]))
                for i in range(50)] + [msg(offset=50, value=None, key=None)]
    path = tmp_path / "rec.jsonl.gz"
    assert write_recording(path, ["dcpulse.telemetry.v1"], messages, recorded_at=AT) == 51
    assert read_header(path).topics == ("dcpulse.telemetry.v1",)
    assert list(iter_recording(path)) == messages
    # Written atomically: nothing but the final file is left in the directory.
    assert [p.name for p in tmp_path.iterdir()] == ["rec.jsonl.gz"]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def broken():
        yield msg()
        raise RuntimeError("source died")

    path = tmp_path / "rec.jsonl.gz"
    with pytest.raises(RuntimeError):
        write_recording(path, ["t"], broken())
    assert list(tmp_path.iterdir()) == []


def test_wrong_format_file_is_rejected(tmp_path: Path) -> None:
    path = _gzip_lines(tmp_path / "x.gz", orjson.dumps({"format": "something/1"}), encode_record(msg()))
    with pytest.raises(ValueError, match=r"line 1: unsupported recording format 'something/1'"):
        list(iter_recording(path))
    with pytest.raises(ValueError, match="unsupported recording format"):
        read_header(path)


def test_plain_text_and_empty_files_are_rejected(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(encode_header(["t"], AT) + b"\n")
    with pytest.raises(ValueError, match="not a gzip-compressed"):
        list(iter_recording(plain))
    empty = _gzip_lines(tmp_path / "empty.gz")
    with pytest.raises(ValueError, match="empty file"):
        list(iter_recording(empty))


def test_corrupt_line_error_names_the_line(tmp_path: Path) -> None:
    path = _gzip_lines(tmp_path / "bad.gz", encode_header(["t"], AT), encode_record(msg(0)),
                       encode_record(msg(1)), b'{"topic": "t", "partition": 0', encode_record(msg(3)))
    records = iter_recording(path)
    assert next(records).offset == 0  # the good lines before it are still readable
    assert next(records).offset == 1
    with pytest.raises(ValueError, match=r"bad\.gz: line 4: not valid JSON"):
        next(records)


def test_truncated_gzip_is_an_error_not_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "rec.gz"
    write_recording(path, ["t"], [msg(i, value=BINARY) for i in range(200)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt gzip data after line"):
        list(iter_recording(path))


TIMESTAMPS = [10_000, 10_000, 10_500, 12_000, 11_000, 30_000]


def test_pacing_at_speed_1_follows_recorded_gaps() -> None:
    # 11_000 after 12_000 (clock skew): sent at once after it, never "back in time".
    assert pacing_schedule(TIMESTAMPS, 1.0) == [0.0, 0.0, 0.5, 2.0, 2.0, 20.0]


def test_pacing_at_speed_10_divides_gaps() -> None:
    assert pacing_schedule(TIMESTAMPS, 10.0) == pytest.approx([0.0, 0.0, 0.05, 0.2, 0.2, 2.0])


def test_pacing_never_goes_backwards() -> None:
    schedule = pacing_schedule([5_000, 9_000, 1_000, 4_000, 9_500, -1, 9_000], 1.0)
    assert schedule == [0.0, 4.0, 4.0, 4.0, 4.5, 4.5, 4.5]
    assert schedule == sorted(schedule)


def test_pacing_at_max_sends_everything_at_once() -> None:
    assert pacing_schedule(TIMESTAMPS, None) == [0.0] * len(TIMESTAMPS)
    assert due_offset_s(99_000, 10_000, None) == 0.0


def test_pacing_edge_cases() -> None:
    # Older than the first (another partition lagging): due now, never negative.
    assert due_offset_s(9_000, 10_000, 1.0) == 0.0
    # Unknown timestamps (-1) follow the record before them; the base is the first known one.
    assert pacing_schedule([-1, 5_000, -1, 6_000], 2.0) == [0.0, 0.0, 0.0, 0.5]
    assert pacing_schedule([5_000, 7_000, -1, 6_000], 1.0) == [0.0, 2.0, 2.0, 2.0]
    assert pacing_schedule([], 1.0) == []
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="speed"):
            due_offset_s(1, 0, bad)


def rec(partition: int, offset: int, ts: int, topic: str = "t") -> RecordedMessage:
    return RecordedMessage(topic=topic, partition=partition, offset=offset, timestamp_ms=ts,
                           key=b"p%d" % partition, value=b"%d/%d" % (partition, offset))


def where(messages: list[RecordedMessage]) -> list[tuple[str, int, int]]:
    return [(m.topic, m.partition, m.offset) for m in messages]


def from_beginning_file(*partitions: list[int]) -> list[RecordedMessage]:
    """File order of a recording made --from-beginning: one partition's batch after another."""
    return [rec(p, offset, ts) for p, stamps in enumerate(partitions)
            for offset, ts in enumerate(stamps)]


def test_merge_keeps_each_partitions_order() -> None:
    file_order = from_beginning_file([0, 300, 600, 900], [100, 400, 700], [200, 500, 800, 1100])
    merged = merge_by_timestamp(file_order)
    assert sorted(where(merged)) == sorted(where(file_order))  # nothing lost or duplicated
    for partition in range(3):
        offsets = [m.offset for m in merged if m.partition == partition]
        assert offsets == sorted(offsets)


def test_merge_interleaves_partitions_by_time() -> None:
    file_order = from_beginning_file([0, 300, 600, 900], [100, 400, 700], [200, 500, 800, 1100])
    merged = merge_by_timestamp(file_order)
    assert [m.timestamp_ms for m in merged] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1100]
    # The bug this fixes: paced in file order, partitions 1 and 2 would be overdue after
    # partition 0's 0.9 s and go out together; merged, the sends spread over the whole span.
    assert pacing_schedule([m.timestamp_ms for m in file_order], 1.0)[4:] == [0.9] * 6 + [1.1]
    assert pacing_schedule([m.timestamp_ms for m in merged], 1.0) == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1])


def test_merge_interleaves_topics_too() -> None:
    file_order = [rec(0, 0, 10, "a"), rec(0, 1, 30, "a"), rec(0, 0, 20, "b"), rec(0, 1, 40, "b")]
    assert where(merge_by_timestamp(file_order)) == [("a", 0, 0), ("b", 0, 0), ("a", 0, 1),
                                                     ("b", 0, 1)]


def test_merge_handles_timestamps_going_backwards_inside_a_partition() -> None:
    # Partition 0's producer clock jumped back: 50 after 100. It must still follow 100.
    file_order = from_beginning_file([100, 50, 200], [60, 150])
    merged = merge_by_timestamp(file_order)
    assert [(m.partition, m.timestamp_ms) for m in merged] == [
        (1, 60), (0, 100), (0, 50), (1, 150), (0, 200)]
    # The late record goes out right after its predecessor, without waiting backwards.
    assert pacing_schedule([m.timestamp_ms for m in merged], 1.0) == pytest.approx(
        [0.0, 0.04, 0.04, 0.09, 0.14])


def test_merge_breaks_ties_by_file_position() -> None:
    file_order = from_beginning_file([5, 5, 7], [5, 7], [3, 5])
    merged = merge_by_timestamp(file_order)
    assert where(merged) == [("t", 2, 0), ("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 2, 1),
                             ("t", 0, 2), ("t", 1, 1)]
    # Deterministic: the same file always gives the same order, whatever the dict/heap history.
    assert all(where(merge_by_timestamp(list(file_order))) == where(merged) for _ in range(5))
    # Fully equal timestamps keep file order exactly.
    same = from_beginning_file([1, 1], [1, 1], [1])
    assert where(merge_by_timestamp(same)) == where(same)


def test_merge_records_without_timestamp_follow_their_predecessor() -> None:
    file_order = from_beginning_file([10, -1, 40], [20, 30])
    assert [(m.partition, m.timestamp_ms) for m in merge_by_timestamp(file_order)] == [
        (0, 10), (0, -1), (1, 20), (1, 30), (0, 40)]


def test_merge_edge_cases() -> None:
    assert merge_by_timestamp([]) == []
    single = from_beginning_file([3, 1, 2])
    assert merge_by_timestamp(single) == single  # one partition: its order, untouched
    assert merge_by_timestamp(iter(single)) == single  # any iterable, read once


@pytest.mark.parametrize("text, speed", [("1", 1.0), ("10", 10.0), ("2.5", 2.5), ("10x", 10.0),
                                         ("max", None), ("MAX", None)])
def test_parse_speed(text: str, speed: float | None) -> None:
    assert parse_speed(text) == speed


@pytest.mark.parametrize("text", ["0", "-1", "fast", "", "inf"])
def test_parse_speed_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def test_shifting_keeps_gaps_and_starts_at_now() -> None:
    now = 1_800_000_000_000
    shifted = shift_timestamps(TIMESTAMPS, now)
    assert shifted[0] == now
    assert [b - a for a, b in zip(shifted, shifted[1:])] == [
        b - a for a, b in zip(TIMESTAMPS, TIMESTAMPS[1:])]
    assert shifted == [ts + shift_delta_ms(TIMESTAMPS[0], now) for ts in TIMESTAMPS]


def test_shifting_leaves_unknown_timestamps_alone() -> None:
    assert shift_timestamps([-1, 1_000, 1_250], 5_000) == [-1, 5_000, 5_250]
    assert shift_timestamps([-1, -1], 5_000) == [-1, -1]


def test_parse_topic_map() -> None:
    assert parse_topic_map(["a=b", " c = d "]) == {"a": "b", "c": "d"}
    for bad in (["a"], ["=b"], ["a="], ["a=b", "a=c"]):
        with pytest.raises(ValueError):
            parse_topic_map(bad)
