"""Publish telemetry to Kafka with kafka-python: ordered per device, durable, errors counted."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from kafka import KafkaProducer

from dcpulse.contract import Telemetry
from dcpulse.log import get_logger

log = get_logger(__name__)


class TelemetryPublisher:
    """acks=all + idempotence (per-partition order survives retries); key = site/device.

    Delivery failures are never dropped silently: each is logged and counted in
    `failures` (by error type); `close()` flushes whatever is still buffered.
    """

    def __init__(self, bootstrap: str, topic: str, **overrides: Any) -> None:
        self.topic = topic
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "dcpulse-producer",
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": "gzip",
            "linger_ms": 20,
            "batch_size": 256 * 1024,
            "max_request_size": 2 * 1024 * 1024,
        }
        self._producer = KafkaProducer(**{**config, **overrides})

    def publish(self, event: Telemetry) -> None:
        self.publish_raw(event.key.encode(), event.to_bytes())

    def publish_raw(self, key: bytes, value: bytes) -> None:
        """Send already-serialised bytes (the simulator's fast path, and bad input on purpose)."""
        future = self._producer.send(self.topic, key=key, value=value)
        future.add_callback(self._delivered)
        future.add_errback(self._failed, key.decode(errors="replace"))

    def _delivered(self, _metadata: Any) -> None:
        with self._lock:
            self.sent += 1

    def _failed(self, key: str, error: BaseException) -> None:
        # kafka-python calls errbacks as f(*extra_args, exception).
        with self._lock:
            self.failures[type(error).__name__] += 1
        log.error("delivery failed", topic=self.topic, key=key, error=repr(error))

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)
        self._producer.close(timeout=timeout_s)
