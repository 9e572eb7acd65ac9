"""The pure part of recording: file format, validation, reading and writing, the replay plan of a
recording file (the plan itself: test_replay_order.py)."""

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from dcpulse.producers.publisher import KeyPartitioner
from dcpulse.producers.recording import (
    FORMAT,
    RecordedMessage,
    decode_record,
    encode_header,
    encode_record,
    iter_recording,
    parse_header,
    parse_topic_map,
    read_header,
    replay_plan,
    write_recording,
)

BINARY = bytes(range(256)) + b"\xff\xfe\x80 not utf-8 \xc3\x28"
AT = datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)


def msg(offset: int = 0, ts: int = 1_700_000_000_000, **changes: object) -> RecordedMessage:
    fields: dict[str, object] = dict(topic="dcpulse.telemetry.v2", partition=2, offset=offset,
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
    assert obj == {"topic": "dcpulse.telemetry.v2", "partition": 2, "offset": 0,
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
    assert write_recording(path, ["dcpulse.telemetry.v2"], messages, recorded_at=AT) == 51
    assert read_header(path).topics == ("dcpulse.telemetry.v2",)
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


def test_parse_topic_map() -> None:
    assert parse_topic_map(["a=b", " c = d "]) == {"a": "b", "c": "d"}
    for bad in (["a"], ["=b"], ["a="], ["a=b", "a=c"]):
        with pytest.raises(ValueError):
            parse_topic_map(bad)


def test_replay_plan_of_a_file_names_partition_timestamp_key_value(tmp_path: Path) -> None:
    mark = b'{"schema":"dcpulse.watermark/1","site":"s","producer":"simulate","ts":"2026-07-01T00:00:09Z"}'
    messages = [RecordedMessage("raw", 0, 0, 1_000, b"s/rack-a", b"a"),
                RecordedMessage("raw", 0, 1, 1_000, b"s/~watermark", mark),
                RecordedMessage("raw", 1, 0, -1, None, b"no key, no time"),
                RecordedMessage("raw", 1, 1, 1_000, b"s/~watermark", mark),
                RecordedMessage("other", 0, 0, 5, b"k", b"elsewhere")]
    path = tmp_path / "rec.jsonl.gz"
    write_recording(path, ["raw", "other"], messages)
    with pytest.raises(ValueError, match="several topics"):
        replay_plan(path, 3)
    plan = replay_plan(path, 3, topic="raw")
    assert plan == replay_plan(messages, 3, topic="raw")
    assert plan == [(1, None, None, b"no key, no time"), (KeyPartitioner(3)(b"s/rack-a"), 1_000, b"s/rack-a", b"a"),
                    (0, 1_000, b"s/~watermark", mark), (1, 1_000, b"s/~watermark", mark),
                    (2, 1_000, b"s/~watermark", mark)]
    assert replay_plan(path, 2, topic="other") == [(KeyPartitioner(2)(b"k"), 5, b"k", b"elsewhere")]
