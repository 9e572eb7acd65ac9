"""Publish telemetry to Kafka with kafka-python: ordered per device, durable, errors counted."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger

log = get_logger(__name__)


class TelemetryPublisher:
    """acks=all + idempotence (per-partition order survives retries); key = the site.

    Delivery failures are never dropped silently: each is logged and counted in
    `failures` (by error type); `close()` flushes whatever is still buffered, after which
    `sent` counts the records the broker acknowledged.
    """

    def __init__(self, bootstrap: str, topic: str, **overrides: Any) -> None:
        self.topic = topic
        self.published = 0
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "dcpulse-producer",
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": "zstd",  # as tight as gzip here at a fraction of its CPU
            "linger_ms": 20,
            "batch_size": 256 * 1024,
            "max_request_size": 2 * 1024 * 1024,
        }
        self._producer = KafkaProducer(**{**config, **overrides})
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}

    def publish(self, event: Telemetry) -> None:
        self.publish_raw(event.key.encode(), event.to_bytes())

    def publish_raw(self, key: bytes, value: bytes, timestamp_ms: int | None = None) -> None:
        """Send already-serialised bytes (the simulator's fast path, and bad input on purpose).
        timestamp_ms: the record's Kafka timestamp (event time); default: now."""
        future = self._producer.send(self.topic, key=key, value=value, partition=self._partition(key),
                                     timestamp_ms=timestamp_ms)
        future.add_errback(self._failed, key)
        self.published += 1

    def _partition(self, key: bytes) -> int:
        """The default partitioner's choice (murmur2 of the key), computed once per device:
        kafka-python's pure-Python murmur2 on every send is a fifth of the publish cost."""
        partition = self._partition_of.get(key)
        if partition is None:
            if not self._partitions:
                self._partitions = sorted(self._producer.partitions_for(self.topic))
            partition = self._partitions[(murmur2(key) & 0x7FFFFFFF) % len(self._partitions)]
            self._partition_of[key] = partition
        return partition

    @property
    def sent(self) -> int:
        """Acknowledged records: valid once flush() or close() has returned."""
        return self.published - sum(self.failures.values())

    def _failed(self, key: bytes, error: BaseException) -> None:
        # kafka-python calls errbacks as f(*extra_args, exception).
        with self._lock:
            self.failures[type(error).__name__] += 1
        log.error("delivery failed", topic=self.topic, key=key.decode(errors="replace"), error=repr(error))

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)
        self._producer.close(timeout=timeout_s)
