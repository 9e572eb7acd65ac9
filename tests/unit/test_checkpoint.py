"""The commit order (streams/checkpoint.py CheckpointedAgent): a batch returns, and so can be
acked and committed, only once every output and every state bucket it produced is confirmed
delivered; a failed delivery makes the batch run again from the last checkpoint, so no source
offset is committed past an output that was not delivered."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import dcpulse.streams.checkpoint as checkpoint
from dcpulse.producers.publisher import KeyPartitioner
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.checkpoint import EXIT_UNCHECKPOINTED, CheckpointedAgent, Send, run_batches
from dcpulse.streams.stage import Outputs, PartitionStage, decode_state, new_state
from dcpulse.streams.state import OFFSET_KEY, PartitionState
from tests.unit.test_stage import ToySite

PARTITIONS = 2
BUCKETS = 8
REAL_SLEEP = asyncio.sleep


class Broken(Exception):
    pass


class FakeDelivery:
    """A producer whose delivery futures fail while `failures` lasts (one per future), or while
    `down` is set; it notes what was handed to it and what was confirmed."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.down = False
        self.handed: list[tuple[Any, ...]] = []
        self.delivered: list[tuple[Any, ...]] = []
        self.on_send: list[Any] = []  # callbacks run at every send (to look at the table then)

    async def __call__(self, *message: Any) -> asyncio.Future:
        for callback in self.on_send:
            callback()
        self.handed.append(message)
        future = asyncio.get_running_loop().create_future()
        if self.down or self.failures > 0:
            self.failures -= 1
            future.set_exception(Broken(f"delivery of {message[0]!r} failed"))
        else:
            self.delivered.append(message)
            future.set_result(None)
        return future


def event(partition: int, offset: int, ts_ms: int | None, key: bytes | None, value: bytes | None) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset,
                                                   timestamp=None if ts_ms is None else ts_ms / 1000,
                                                   key=key, value=value))


def events_of(ticks: int) -> list[Any]:
    """The toy site's records on two partitions, as Faust events with per-partition offsets."""
    place = KeyPartitioner(PARTITIONS)
    offsets: Counter[int] = Counter()
    out = []
    for partition, ts, key, value in ToySite().records(ticks, place, PARTITIONS):
        out.append(event(partition, offsets[partition], ts, key, value))
        offsets[partition] += 1
    return out


def run(stage: PartitionStage, events: Sequence[Any], counts: Counter[str]) -> list[Send]:
    """As the worker does: one partition's events through its stage, every output to send."""
    out = Outputs(counts=counts)
    for e in events:
        m = e.message
        stage.handle(out, m.offset, round(m.timestamp * 1000), m.key, m.value)
    return ([("valid", k, v) for k, v in out.valid] + [("dead", k, d.to_bytes()) for k, d in out.dead]
            + [("results", None, p.to_bytes()) for p in out.results]
            + [("partials", p.site.encode(), orjson.dumps(p.to_json())) for p in out.partials])


def agent(send: FakeDelivery, changelog: FakeDelivery, table: dict[str, bytes], **kwargs: Any) -> CheckpointedAgent:
    def make_stage(partition: int, state: PartitionState) -> PartitionStage:
        return PartitionStage("raw", partition, PARTITIONS, state, ValidationSettings(), AnalyticsSettings())

    return CheckpointedAgent("analyse", BUCKETS, decode_state, make_stage, run, send, changelog, table, **kwargs)


def offset_guard(table: dict[str, bytes], partition: int) -> int | None:
    """The offset guard of a partition as the table holds it (what a restart would load)."""
    state = new_state(partition, BUCKETS)
    state.load(table)
    return state.get(OFFSET_KEY)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No real waiting: the backoff's sleeps are noted and yield to the loop once."""
    delays: list[float] = []

    async def sleep(delay: float, *args: Any) -> None:
        delays.append(delay)
        await REAL_SLEEP(0)

    monkeypatch.setattr(checkpoint.asyncio, "sleep", sleep)
    return delays


def clean_run(batches: list[list[Any]]) -> tuple[dict[str, bytes], list[tuple[Any, ...]], Counter[str]]:
    """The table, the deliveries and the counts of the same batches without a failure."""
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    a = agent(send, changelog, table)

    async def go() -> None:
        for batch in batches:
            await a.handle(batch)

    asyncio.run(go())
    return table, send.delivered, a.counts


def without_times(messages: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [m for m in messages if m[0] != "dead"]  # dead letters carry their rejection time


# ---- a failed delivery holds the batch -------------------------------------------------------------

def test_handle_does_not_return_while_an_output_cannot_be_delivered(sleeps) -> None:
    everything = events_of(24)
    first, second = everything[:len(events_of(12))], everything[len(events_of(12)):]
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    a = agent(send, changelog, table)
    asyncio.run(a.handle(first))
    checkpointed = dict(table)
    send.down = True
    acked: list[Any] = []

    async def scenario() -> None:
        async def take_and_ack() -> None:  # Faust acks a batch's events once the body is done with them
            await a.handle(second)
            acked.extend(second)

        task = asyncio.create_task(take_and_ack())
        changelog_writes = len(changelog.handed)
        for _ in range(50):
            await REAL_SLEEP(0)
        assert not task.done() and acked == []
        assert table == checkpointed  # not one of the failed batch's buckets
        assert len(changelog.handed) == changelog_writes  # no state written for an undelivered batch
        assert len(sleeps) >= 3 and a.counts["checkpoint_retries"] == len(sleeps)
        send.down = False
        await task

    asyncio.run(scenario())
    assert acked == second and table != checkpointed
    for partition in range(PARTITIONS):
        last = max(e.message.offset for e in second if e.message.partition == partition)
        assert offset_guard(table, partition) == last


@pytest.mark.parametrize("failures", [1, 3, 40])
def test_the_offset_guard_in_the_table_advances_only_once_the_outputs_are_delivered(sleeps, failures: int) -> None:
    everything = events_of(24)
    first, second = everything[:len(events_of(12))], everything[len(events_of(12)):]
    table: dict[str, bytes] = {}
    send, changelog = FakeDelivery(), FakeDelivery()
    a = agent(send, changelog, table)
    asyncio.run(a.handle(first))  # a checkpoint to come back to
    guard_before = [offset_guard(table, p) for p in range(PARTITIONS)]
    assert None not in guard_before

    send.failures = failures
    seen: list[list[int | None]] = []
    send.on_send.append(lambda: seen.append([offset_guard(table, p) for p in range(PARTITIONS)]))
    asyncio.run(a.handle(second))

    assert a.counts["checkpoint_retries"] >= 1
    failed_sends = len(send.handed) - len(send.delivered)
    assert failed_sends == failures
    assert all(guard == guard_before for guard in seen)  # not while any output was being delivered
    for partition in range(PARTITIONS):
        assert offset_guard(table, partition) == max(e.message.offset for e in second
                                                     if e.message.partition == partition)


def test_a_batch_redone_after_failures_checkpoints_exactly_what_a_clean_run_does(sleeps) -> None:
    batches = [events_of(6), events_of(18)[len(events_of(6)):]]
    clean_table, clean_delivered, clean_counts = clean_run(batches)

    send, changelog, table = FakeDelivery(failures=5), FakeDelivery(failures=2), {}
    a = agent(send, changelog, table)

    async def go() -> None:
        for batch in batches:
            await a.handle(batch)

    asyncio.run(go())
    assert table == clean_table  # bit for bit: the failed attempts left nothing behind
    counts = Counter(a.counts)
    assert counts.pop("checkpoint_retries") >= 2 and counts == clean_counts  # each record counted once
    # Outputs delivered before a failure go out again (at least once); nothing is missing.
    delivered = without_times(send.delivered)
    assert set(delivered) == set(without_times(clean_delivered))
    assert len(delivered) > len(without_times(clean_delivered))


def test_a_failed_changelog_write_holds_the_batch_and_leaves_the_table_alone(sleeps) -> None:
    batch = events_of(12)
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    changelog.down = True
    a = agent(send, changelog, table)

    async def scenario() -> None:
        task = asyncio.create_task(a.handle(batch))
        for _ in range(30):
            await REAL_SLEEP(0)
        assert not task.done() and table == {}
        assert send.delivered  # outputs did go out: they will again, keyed to overwrite themselves
        changelog.down = False
        await task

    asyncio.run(scenario())
    clean_table, _, _ = clean_run([batch])
    assert table == clean_table
    assert sorted(k for _, k, _ in changelog.delivered) == sorted(clean_table)


def test_the_backoff_doubles_up_to_its_cap(sleeps) -> None:
    send, changelog, table = FakeDelivery(failures=7), FakeDelivery(), {}
    a = agent(send, changelog, table, max_backoff_s=3.0)
    batch = [event(0, 0, 1_000, b"s1/~watermark", b"{not json")]  # one output (a dead letter) per attempt
    asyncio.run(a.handle(batch))
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_a_revoked_partition_is_reloaded_from_the_table() -> None:
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    a = agent(send, changelog, table)
    asyncio.run(a.handle(events_of(6)))
    _, state = a.stage(0)
    state["scribble"] = "not checkpointed"
    a.forget({0})
    _, reloaded = a.stage(0)
    assert reloaded is not state and "scribble" not in reloaded
    assert reloaded[OFFSET_KEY] == offset_guard(table, 0)


def test_input_that_resumes_past_the_checkpoint_is_counted_as_a_gap() -> None:
    events = [e for e in events_of(6) if e.message.partition == 0]
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    a = agent(send, changelog, table)
    asyncio.run(a.handle(events[:3]))
    asyncio.run(a.handle(events[3:4]))  # the next offset: no gap
    assert a.counts["offset_gaps"] == 0
    asyncio.run(a.handle(events[5:]))  # offset 4 never seen
    assert a.counts["offset_gaps"] == 1


def test_a_table_copy_behind_the_input_is_replaced_by_the_changelog_itself() -> None:
    events = [e for e in events_of(6) if e.message.partition == 0]
    first_owner = FakeDelivery()
    changelog: dict[bytes, bytes] = {}
    a = agent(first_owner, FakeDelivery(), changelog)
    asyncio.run(a.handle(events[:3]))
    reads: list[int] = []

    def read_changelog(partition: int) -> dict[bytes, bytes]:
        reads.append(partition)
        return dict(changelog)

    # The next owner's table recovered nothing, but the committed offset says 3.
    b = agent(FakeDelivery(), FakeDelivery(), {}, read_changelog=read_changelog)
    asyncio.run(b.handle(events[3:]))
    assert reads == [0] and b.counts["state_reloads"] == 1 and b.counts["offset_gaps"] == 0
    assert offset_guard(b.table_data, 0) == events[-1].message.offset


# ---- a batch that cannot be checkpointed ends the process -------------------------------------------

class Exited(BaseException):
    pass


def test_a_batch_that_fails_otherwise_exits_before_it_can_be_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    def exit_(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(checkpoint.os, "_exit", exit_)

    async def raising_send(*message: Any) -> Any:
        raise ValueError("MessageSizeTooLarge")  # raised by the producer itself, not its future

    a = agent(raising_send, FakeDelivery(), {})  # type: ignore[arg-type]
    handled: list[int] = []

    async def batches():
        for batch in (events_of(6), events_of(12)):
            yield batch
            handled.append(len(batch))  # only reached if the body came back for more

    with pytest.raises(Exited):
        asyncio.run(run_batches(a, batches()))
    assert codes == [EXIT_UNCHECKPOINTED] and handled == []


def test_run_batches_handles_every_batch_in_turn() -> None:
    send, changelog, table = FakeDelivery(), FakeDelivery(), {}
    a = agent(send, changelog, table)
    all_events = events_of(12)

    async def batches():
        yield all_events[:20]
        yield all_events[20:]

    asyncio.run(run_batches(a, batches()))
    assert offset_guard(table, 0) == max(e.message.offset for e in all_events if e.message.partition == 0)
