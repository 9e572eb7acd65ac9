"""One raw partition's working state, kept in memory and persisted to a changelog in buckets.

The stage's rules (validation: duplicates, clock skew, the offset guard; windows: open-window
state per device and site) read and write a key-value store for every record. Writing each
change to a Faust table costs a changelog message per key per record, which is what kept the
stage at a few hundred records/s. Here the store is a plain dict; every key belongs to one of
`buckets` buckets (crc32 of the key), and after a batch of records only the buckets that changed
are encoded (orjson, JSON values only) and written, once each, as table entries
`<partition>/<bucket>`. The changelog therefore always holds whole buckets as of the end of some
batch, and the offset guard (also a key here) says which raw offset that state has seen.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson


def bucket_key(partition: int, bucket: int) -> str:
    return f"{partition}/{bucket}"


class PartitionState(MutableMapping[str, Any]):
    """A dict that remembers which buckets changed since the last `dirty_buckets` call."""

    def __init__(self, partition: int, buckets: int) -> None:
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self.partition = partition
        self.buckets = buckets
        self._data: dict[str, Any] = {}
        self._members: list[set[str]] = [set() for _ in range(buckets)]
        self._dirty: set[int] = set()

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

    def load(self, stored: Mapping[str, bytes | None]) -> int:
        """Fill from the table's entries for this partition (after recovery); returns the number
        of buckets found. Nothing loaded counts as changed."""
        found = 0
        for bucket in range(self.buckets):
            raw = stored.get(bucket_key(self.partition, bucket))
            if not raw:
                continue
            found += 1
            for key, value in orjson.loads(raw).items():
                self._data[key] = value
                self._members[self._bucket(key)].add(key)
        return found

    def dirty_buckets(self) -> list[tuple[str, bytes]]:
        """(table key, encoded bucket) for every bucket changed since the last call, then clean.
        An emptied bucket is written as `{}` so that the changelog forgets its keys too."""
        out = [(bucket_key(self.partition, b), self._encode(self._members[b])) for b in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def _encode(self, keys: Iterable[str]) -> bytes:
        data = self._data
        return orjson.dumps({key: data[key] for key in keys})
