"""The sink's commit ordering with fake Kafka and InfluxDB clients (the real ones: integration tests)."""

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from dcpulse.contract import DeviceKind, Sample, TelemetryBatch
from dcpulse.sinks.deadletters import DeadLetters
from dcpulse.sinks.influx import WriteRejected
from dcpulse.sinks.points import Convert, Lines, TelemetryLines
from dcpulse.sinks.sink import Sink

PARTITION = TopicPartition("valid", 0)


def record(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(topic="valid", partition=0, leader_epoch=-1, offset=offset, timestamp=0, timestamp_type=0,
                          key=b"s1/rack-k1", value=value, headers=[], checksum=None, serialized_key_size=10,
                          serialized_value_size=len(value), serialized_header_size=0)


def telemetry(*devices: str) -> bytes:
    ts = datetime.now(UTC) - timedelta(minutes=1)
    return TelemetryBatch(site="s1", agent="rack-k1", samples=[
        Sample(device=d, kind=DeviceKind.PDU, seq=0, ts=ts, metrics={"power_kw": 1.0}) for d in devices]).to_bytes()


class FakeConsumer:
    def __init__(self, records: list[ConsumerRecord]) -> None:
        self.records = records
        self.commits: list[dict[TopicPartition, Any]] = []
        self.closed = False
        self._paused: set[TopicPartition] = set()

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[ConsumerRecord]]:
        if self.records and PARTITION not in self._paused:
            records, self.records = self.records, []
            return {PARTITION: records}
        time.sleep(min(timeout_ms, 10) / 1000)
        return {}

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int) -> None:
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {PARTITION}

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing is assigned during these tests")

    def close(self, autocommit: bool, timeout_ms: int) -> None:
        assert not autocommit
        self.closed = True


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error:
            raise self.error


class FakeProducer:
    """Fails every send while `failing` is set."""

    def __init__(self, failing: threading.Event, sent: list[bytes]) -> None:
        self.failing = failing
        self.sent = sent

    def send(self, topic: str, key: bytes | None, value: bytes) -> FakeFuture:
        if self.failing.is_set():
            return FakeFuture(KafkaTimeoutError("broker unreachable"))
        self.sent.append(value)
        return FakeFuture(None)

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class FakeWriter:
    """Refuses (4xx) any body holding a line with `refused` in it; after `down_after` calls every
    write fails as if InfluxDB were down."""

    def __init__(self, refused: bytes = b"\0", down_after: int | None = None) -> None:
        self.refused = refused
        self.down_after = down_after
        self.calls = 0
        self.written: list[bytes] = []

    def write(self, bucket: str, lines: list[bytes]) -> None:
        self.calls += 1
        if self.down_after is not None and self.calls > self.down_after:
            raise ConnectionRefusedError("influxd down")
        if any(self.refused in line for line in lines):
            raise WriteRejected(400, "unable to parse")
        self.written += lines

    def close(self) -> None:
        pass


def make_sink(records: list[ConsumerRecord], writer: FakeWriter, failing: threading.Event,
              letters: list[bytes], convert: Convert | None = None) -> tuple[Sink, FakeConsumer]:
    consumer = FakeConsumer(records)
    convert = convert or TelemetryLines(timedelta(hours=1), time.time_ns)
    dead_letters = DeadLetters(lambda: FakeProducer(failing, letters), "deadletter")  # type: ignore[arg-type,return-value]
    sink = Sink("test", consumer, writer, "raw", convert, dead_letters, batch_max_s=0.05)  # type: ignore[arg-type]
    sink.retry.first_s = sink.retry.cap_s = 0.02
    return sink, consumer


def run_until(sink: Sink, done: Any, timeout_s: float = 10.0) -> None:
    thread = threading.Thread(target=sink.run)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.stopping.set()
    thread.join(timeout=timeout_s)
    assert not thread.is_alive(), "the sink did not stop"


def test_a_dead_letter_that_fails_to_send_holds_the_commit_back_until_it_is_sent() -> None:
    failing, letters = threading.Event(), []
    failing.set()
    writer = FakeWriter()
    sink, consumer = make_sink([record(0, telemetry("pdu-1")), record(1, b"{not json")], writer, failing, letters)
    run_until(sink, lambda: sink.retry.retries >= 3)
    assert writer.written and consumer.commits == [] and consumer.closed  # written, never committed
    assert sink.dead_letters.counts == {}

    failing.clear()  # the broker is back: a new sink (same redelivered records) sends and commits
    sink, consumer = make_sink([record(0, telemetry("pdu-1")), record(1, b"{not json")], writer, failing, letters)
    run_until(sink, lambda: consumer.commits)
    assert [orjson.loads(letter)["reason"] for letter in letters] == ["malformed_json"]
    assert [o.offset for o in consumer.commits[0].values()] == [2] and sink.dead_letters.counts == {"malformed_json": 1}


def test_a_dead_letter_send_that_fails_once_is_sent_again_before_the_commit() -> None:
    failing, letters = threading.Event(), []
    failing.set()
    sink, consumer = make_sink([record(0, b"{not json")], FakeWriter(), failing, letters)
    threading.Timer(0.2, failing.clear).start()
    run_until(sink, lambda: consumer.commits)
    assert len(letters) == 1 and sink.retry.retries >= 1 and len(consumer.commits) == 1


def test_a_refused_batch_is_bisected_to_the_refused_line_which_alone_is_dead_lettered() -> None:
    failing, letters = threading.Event(), []
    writer = FakeWriter(refused=b"device=bad")
    records = [record(0, telemetry("pdu-1", "bad", "pdu-3")), record(1, telemetry("pdu-4", "pdu-5"))]
    sink, consumer = make_sink(records, writer, failing, letters)
    run_until(sink, lambda: consumer.commits)
    assert sorted(line.split(b",")[1] for line in writer.written) == [
        b"device=pdu-1", b"device=pdu-3", b"device=pdu-4", b"device=pdu-5"]
    [letter] = [orjson.loads(letter) for letter in letters]
    assert (letter["reason"], letter["source_offset"], letter["sample_index"]) == ("influx_rejected", 0, 1)
    assert [o.offset for o in consumer.commits[0].values()] == [2]


@pytest.mark.parametrize("writer", [FakeWriter(down_after=0), FakeWriter(refused=b"device=bad", down_after=1)],
                         ids=["down", "refused-then-down"])
def test_a_stop_while_influxdb_is_down_returns_promptly_without_commit(writer: FakeWriter) -> None:
    sink, consumer = make_sink([record(0, telemetry("pdu-1", "bad"))], writer, threading.Event(), [])
    started = time.monotonic()
    run_until(sink, lambda: sink.retry.retries >= 3)
    assert time.monotonic() - started < 5 and consumer.commits == [] and consumer.closed and writer.calls >= 4


def test_a_record_the_converter_fails_on_is_dead_lettered_and_the_sink_goes_on() -> None:
    def convert(value: bytes) -> Lines:
        raise RecursionError("a bug")

    letters: list[bytes] = []
    sink, consumer = make_sink([record(0, b"{}")], FakeWriter(), threading.Event(), letters, convert)
    run_until(sink, lambda: consumer.commits)
    assert [orjson.loads(letter)["reason"] for letter in letters] == ["sink_error"]
