"""One partition's working state, kept in memory and checkpointed to a changelog in buckets.

The stages (per raw partition: the offset guard, site clocks, device states; per partials
partition: the combiner's sites) read and write typed values in a key-value store for every
record. Writing each change to a Faust table would cost a changelog message per key per record.
Here the store is a plain dict; every key belongs to one of `buckets` buckets (crc32 of the
key), and at a checkpoint only the buckets that changed are encoded (orjson; a value with a
`to_json` method is stored as its JSON form) and written, once each. `decode(key, json)` turns
a stored value back into its type.

A checkpoint must be all or nothing: a worker killed while its changelog writes are in flight
must not leave some buckets new and others old (the offset guard would then skip records whose
effects were lost, or fold samples twice). So each bucket has two slots, `<partition>/<bucket>/0`
and `/1`, each value stamped with its checkpoint number; checkpoint n writes every changed
bucket to the slot *not* holding its last committed value, and only once those writes are
confirmed the marker `<partition>/checkpoint` = n. Loading takes, per bucket, the newest slot
whose number is at most the marker: a half-written checkpoint is invisible, and the committed
value it would have replaced is still in the other slot. Its slots count as changed, so the
next checkpoint rewrites them before its marker could make them look committed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson


OFFSET_KEY = "offset"  # the last input offset whose outputs and state were checkpointed


def bucket_key(partition: int, bucket: int, slot: int) -> bytes:
    """A bucket slot's key in the table and its changelog (raw bytes, no serializer in between)."""
    return b"%d/%d/%d" % (partition, bucket, slot)


def marker_key(partition: int) -> bytes:
    """The key of a partition's newest complete checkpoint number."""
    return b"%d/checkpoint" % partition


class PartitionState(MutableMapping[str, Any]):
    """A dict that remembers which buckets changed since the last `dirty_buckets` call."""

    def __init__(self, partition: int, buckets: int, decode: Callable[[str, Any], Any]) -> None:
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.partition = partition
        self.buckets = buckets
        self.decode = decode
        self._data: dict[str, Any] = {}
        self._members: list[set[str]] = [set() for _ in range(buckets)]
        self._dirty: set[int] = set()
        self.checkpoint = 0  # the newest complete checkpoint this state is (or builds on)
        self._slot = [1] * buckets  # the slot holding each bucket's committed value (first write: 0)

    def _bucket(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.buckets

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: skip MutableMapping's try/except
        return self._data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        bucket = self._bucket(key)
        self._data[key] = value
        self._members[bucket].add(key)
        self._dirty.add(bucket)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        bucket = self._bucket(key)
        self._members[bucket].discard(key)
        self._dirty.add(bucket)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def load(self, stored: Mapping[bytes, bytes | None]) -> int:
        """Fill from the table's entries for this partition (after recovery), as of its newest
        complete checkpoint; returns the number of buckets found. Nothing loaded counts as changed."""
        marker = stored.get(marker_key(self.partition))
        self.checkpoint = int(marker) if marker else 0
        found = 0
        for bucket in range(self.buckets):
            newest: tuple[int, int, bytes] | None = None
            for slot in (0, 1):
                raw = stored.get(bucket_key(self.partition, bucket, slot))
                if not raw:
                    continue
                number, _, body = raw.partition(b" ")
                if int(number) > self.checkpoint:  # half-written: rewrite it before the marker moves past it
                    self._dirty.add(bucket)
                elif newest is None or int(number) > newest[0]:
                    newest = (int(number), slot, body)
            if newest is None:
                self._slot[bucket] = 1  # a half-written first value sits in slot 0: the next write goes there
                continue
            found += 1
            self._slot[bucket] = newest[1]
            for key, value in orjson.loads(newest[2]).items():
                self._data[key] = self.decode(key, value)
                self._members[self._bucket(key)].add(key)
        return found

    def dirty_buckets(self) -> list[tuple[bytes, bytes]]:
        """The next checkpoint's writes, then clean: (table key, value) of every bucket changed
        since the last call, each to its free slot, and last the marker, which must be written
        only once the others are confirmed. An emptied bucket is written as `{}` so that the
        changelog forgets its keys too. Nothing changed: no writes. After a failed checkpoint
        the state must be reloaded, not asked again."""
        if not self._dirty:
            return []
        number = self.checkpoint + 1
        out = []
        for bucket in sorted(self._dirty):
            slot = self._slot[bucket] = 1 - self._slot[bucket]
            out.append((bucket_key(self.partition, bucket, slot), b"%d %s" % (number, self._encode(self._members[bucket]))))
        out.append((marker_key(self.partition), b"%d" % number))
        self.checkpoint = number
        self._dirty.clear()
        return out

    def _encode(self, keys: Iterable[str]) -> bytes:
        data = self._data
        return orjson.dumps({key: _json(data[key]) for key in keys})


def _json(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)
    return value if to_json is None else to_json()
