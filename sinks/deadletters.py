"""The sink's dead letters: sent as soon as they are found, confirmed by Kafka before the commit.

A letter counts only once its send is confirmed (each future's result, not just a flush). A
letter whose send failed is kept and sent again by the next `confirm`, on a fresh producer, so
the batch that owns it is never committed while one of its letters is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from dcpulse.deadletter import Rejection, dead_letter


class DeadLettersUnsent(Exception):
    """Some dead letters of the batch were not confirmed: the batch must not be committed."""


@dataclass
class _Letter:
    reason: str
    key: bytes | None
    value: bytes
    future: FutureRecordMetadata | None = None  # None: not (or no longer) on its way
    error: Exception | None = None  # why its last send failed


class DeadLetters:
    def __init__(self, producer_factory: Callable[[], KafkaProducer], topic: str, timeout_s: float = 10.0) -> None:
        self._new_producer = producer_factory
        self._producer = producer_factory()
        self._fresh_producer_needed = False
        self.topic = topic
        self.timeout_s = timeout_s
        self._unconfirmed: list[_Letter] = []
        self.counts: Counter[str] = Counter()  # confirmed letters by reason

    def send(self, rejection: Rejection, record: ConsumerRecord, sample_index: int | None, value: bytes | None) -> None:
        """Dead-letter `record` (or its sample `sample_index`, whose JSON is `value`)."""
        letter = dead_letter(rejection, stage="sink", topic=record.topic, partition=record.partition,
                             offset=record.offset, key=record.key,
                             value=record.value if value is None else value, sample_index=sample_index)
        self._unconfirmed.append(_Letter(rejection.reason, record.key, letter.to_bytes()))
        if not self._fresh_producer_needed:
            self._dispatch(self._unconfirmed[-1])

    def _dispatch(self, letter: _Letter) -> None:
        try:
            letter.future = self._producer.send(self.topic, key=letter.key, value=letter.value)
        except Exception as exc:  # noqa: BLE001 - left without a future: `confirm` sends it again
            letter.future, letter.error = None, exc

    def confirm(self) -> None:
        """Wait for every letter not yet confirmed (sending again those that failed before);
        raise `DeadLettersUnsent` while any is not in Kafka."""
        if not self._unconfirmed:
            return
        if self._fresh_producer_needed:
            self._producer.close(timeout=0)
            self._producer = self._new_producer()
            self._fresh_producer_needed = False
        for letter in self._unconfirmed:
            if letter.future is None:
                self._dispatch(letter)
        try:
            self._producer.flush(timeout=self.timeout_s)
        except KafkaTimeoutError:
            pass  # the futures still pending say which letters
        failed = []
        for letter in self._unconfirmed:
            if letter.future is not None:
                try:
                    letter.future.get(timeout=0)
                    self.counts[letter.reason] += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - any failure: the letter is not in Kafka
                    letter.future, letter.error = None, exc
            failed.append(letter)
        self._unconfirmed = failed
        if failed:
            self._fresh_producer_needed = True  # an idempotent producer may be unusable after a failure
            raise DeadLettersUnsent(f"{len(failed)} dead letters unsent: {failed[0].error!r}")

    def close(self) -> None:
        self._producer.close(timeout=self.timeout_s)
