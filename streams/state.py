"""One partition's working state, kept in memory and checkpointed to a changelog in buckets.

The stages (per raw partition: the offset guard, site clocks, device states; per partials
partition: the combiner's sites) read and write typed values in a key-value store for every
record. Writing each change to a Faust table would cost a changelog message per key per record.
Here the store is a plain dict; every key belongs to one of `buckets` buckets (crc32 of the
key), and at a checkpoint only the buckets that changed are encoded (orjson; a value with a
`to_json` method is stored as its JSON form) and written, once each, as table entries
`<partition>/<bucket>`. The changelog therefore always holds whole buckets as of the end of
some checkpoint, and the offset guard (also a key) says which input offset that state has seen.
`decode(key, json)` turns a stored value back into its type.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson


OFFSET_KEY = "offset"  # the last input offset whose outputs and state were checkpointed


def bucket_key(partition: int, bucket: int) -> bytes:
    """A bucket's key in the table and its changelog (raw bytes, no serializer in between)."""
    return b"%d/%d" % (partition, bucket)


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
        """Fill from the table's entries for this partition (after recovery); returns the number
        of buckets found. Nothing loaded counts as changed."""
        found = 0
        for bucket in range(self.buckets):
            raw = stored.get(bucket_key(self.partition, bucket))
            if not raw:
                continue
            found += 1
            for key, value in orjson.loads(raw).items():
                self._data[key] = self.decode(key, value)
                self._members[self._bucket(key)].add(key)
        return found

    def dirty_buckets(self) -> list[tuple[bytes, bytes]]:
        """(table key, encoded bucket) for every bucket changed since the last call, then clean.
        An emptied bucket is written as `{}` so that the changelog forgets its keys too."""
        out = [(bucket_key(self.partition, b), self._encode(self._members[b])) for b in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def _encode(self, keys: Iterable[str]) -> bytes:
        data = self._data
        return orjson.dumps({key: _json(data[key]) for key in keys})


def _json(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)
    return value if to_json is None else to_json()
