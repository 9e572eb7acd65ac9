"""The commit order of a Faust agent over checkpointed partition states, in one place.

For every batch of input events (`take_events`), in this order:

1. each partition's records run through its stage, in memory (`PartitionState`);
2. every output is handed to the producer and **every delivery is confirmed**;
3. the state buckets the batch changed are written to the table's changelog and confirmed,
   then each partition's checkpoint marker (streams/state.py: a half-written checkpoint is
   ignored on load); only then does the table's in-memory copy take them (it is what a retry
   reloads from);
4. the batch returns, and `take_events` acks its events: Faust commits only acked offsets.

If a delivery in 2 or 3 fails, nothing of the batch is acked: the partitions' stages are
dropped, reloaded from the last checkpoint in the table, and the batch runs again (with capped
backoff), so a committed offset never runs ahead of an undelivered output or state. Outputs
delivered before the failure go out again: results and partials are keyed by window and
overwrite themselves; dead letters may be repeated (at least once).

`take_events` acks a batch when the body leaves its loop in any way, an exception or a
cancellation (shutdown) included (faust/streams.py). So a batch that cannot be checkpointed
ends the process with `os._exit` before that can happen; a restarted worker redoes it from the
last committed offset, and the state's offset guard skips what its checkpoint already holds.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from faust.types import EventT

from dcpulse.log import get_logger
from dcpulse.streams.state import OFFSET_KEY, PartitionState

log = get_logger(__name__)
EXIT_UNCHECKPOINTED = 75  # EX_TEMPFAIL: restart me
Send = tuple[str, bytes | None, bytes]  # (topic, key, value)
StageT = TypeVar("StageT")


class DeliveryFailed(Exception):
    pass


class CheckpointedAgent(Generic[StageT]):
    """Runs batches through per-partition stages with the commit order above.

    `make_stage(partition, state)` builds a stage over a loaded state; `run(stage, events,
    counts)` feeds it one partition's events and returns what to send; `send(topic, key,
    value)` hands a message to the producer and returns its delivery future;
    `send_changelog(partition, key, value)` does the same for a state bucket; `table_data` is
    the table's in-memory mapping (`<partition>/<bucket>` -> bytes); `read_changelog(partition)`
    reads that partition's changelog from Kafka directly, the fallback when the table's copy is
    found behind the input (below)."""

    def __init__(self, name: str, buckets: int, decode: Callable[[str, Any], Any],
                 make_stage: Callable[[int, PartitionState], StageT],
                 run: Callable[[StageT, Sequence[EventT], Counter[str]], list[Send]],
                 send: Callable[[str, bytes | None, bytes], Awaitable[Any]],
                 send_changelog: Callable[[int, bytes, bytes], Awaitable[Any]],
                 table_data: Any, read_changelog: Callable[[int], Mapping[bytes, bytes]] | None = None,
                 max_backoff_s: float = 30.0) -> None:
        self.name = name
        self.buckets = buckets
        self.decode = decode
        self.make_stage = make_stage
        self.run = run
        self.send = send
        self.send_changelog = send_changelog
        self.table_data = table_data
        self.read_changelog = read_changelog
        self.max_backoff_s = max_backoff_s
        self.stages: dict[int, tuple[StageT, PartitionState]] = {}
        self.counts: Counter[str] = Counter()

    def stage(self, partition: int) -> tuple[StageT, PartitionState]:
        known = self.stages.get(partition)
        if known is None:  # first batch since (re)assignment or a failed checkpoint
            state = PartitionState(partition, self.buckets, self.decode)
            found = state.load(self.table_data)
            log.info("partition state loaded", agent=self.name, partition=partition, buckets=found, keys=len(state))
            known = self.stages[partition] = (self.make_stage(partition, state), state)
        return known

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked or (re)assigned: reloaded from the table before their next batch."""
        for partition in partitions:
            self.stages.pop(partition, None)

    async def handle(self, events: Sequence[EventT]) -> None:
        """One batch, checkpointed; returns only once its outputs and state are durable."""
        by_partition: dict[int, list[EventT]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        delay = 0.5
        while True:
            try:
                await self._attempt(by_partition)
                return
            except DeliveryFailed as exc:
                self.counts["checkpoint_retries"] += 1
                log.error("batch not checkpointed: a delivery failed; redoing it from the last checkpoint",
                          agent=self.name, error=str(exc)[:500], retry_in_s=delay)
                self.forget(set(by_partition))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def _attempt(self, by_partition: dict[int, list[EventT]]) -> None:
        counts: Counter[str] = Counter()
        sends: list[Send] = []
        for partition, events in by_partition.items():
            stage, state = self.stage(partition)
            first = events[0].message.offset
            if _gap(state, first) and self.read_changelog is not None:
                # The input resumes past the loaded checkpoint: the table's recovered copy is
                # behind the changelog (seen right after rebalances). Read the changelog itself.
                counts["state_reloads"] += 1
                stored = await asyncio.to_thread(self.read_changelog, partition)
                self.table_data.update(stored)
                self.forget({partition})
                stage, state = self.stage(partition)
                log.warning("partition state re-read from its changelog", agent=self.name, partition=partition,
                            checkpoint_offset=state.get(OFFSET_KEY), first_offset=first)
            if _gap(state, first):
                # Records between the checkpoint and this batch never reached the state: retention
                # deleted them before they were read, or the changelog lost them.
                counts["offset_gaps"] += 1
                log.error("input offset gap: records after the partition's checkpoint were skipped", agent=self.name,
                          partition=partition, checkpoint_offset=state.get(OFFSET_KEY), first_offset=first)
            sends.extend(self.run(stage, events, counts))
        await self._confirm([await self.send(topic, key, value) for topic, key, value in sends])
        writes = {partition: self.stages[partition][1].dirty_buckets() for partition in by_partition}
        # Buckets first, then each partition's checkpoint marker (streams/state.py): a worker
        # killed in between leaves a checkpoint that loading ignores.
        await self._confirm([await self.send_changelog(partition, key, value)
                             for partition, records in writes.items() for key, value in records[:-1]])
        await self._confirm([await self.send_changelog(partition, *records[-1])
                             for partition, records in writes.items() if records])
        for records in writes.values():
            self.table_data.update(records)
        self.counts.update(counts)

    @staticmethod
    async def _confirm(futures: list[Any]) -> None:
        if not futures:
            return
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise DeliveryFailed(f"{len(failed)} of {len(futures)} deliveries failed, first: {failed[0]!r}")


def _gap(state: PartitionState, first_offset: int) -> bool:
    done = state.get(OFFSET_KEY)
    return first_offset > (done if done is not None else -1) + 1


async def run_batches(agent: CheckpointedAgent[Any], batches: Any) -> None:
    """The agent body: every batch checkpointed, or the process ends before Faust can ack it."""
    async for events in batches:
        try:
            await agent.handle(events)
        except BaseException as exc:  # noqa: BLE001 - cancellation (shutdown) included: see the module docstring
            log.critical("exiting with a batch not checkpointed; its offsets stay uncommitted and it is redone "
                         "on restart", agent=agent.name, events=len(events), error=repr(exc)[:500])
            os._exit(EXIT_UNCHECKPOINTED)
