"""The alert log's start: rebuild the alert book from what the `alerts` sink already wrote.

The book (streams/alertbook.py) must know which alerts are active before it judges the next
transition, so on start it is rebuilt from the alerts topic up to the offsets the sink's group
has committed, without writing anything: those records are in InfluxDB already. The sink then
carries on from there, and the notifier re-posts what is still firing.
"""

from __future__ import annotations

import orjson
from kafka import KafkaConsumer, TopicPartition

from dcpulse import kafka_clients
from dcpulse.streams.alertbook import AlertBook

POLL_MS = 1000


def rebuild(kafka: kafka_clients.KafkaAccess, client_id: str, group: KafkaConsumer, topic: str, book: AlertBook) -> int:
    """Apply every transition before `group`'s committed offsets to the book; their count."""
    partitions = sorted(group.partitions_for_topic(topic) or ())
    ends = {tp: end for tp in (TopicPartition(topic, p) for p in partitions) if (end := group.committed(tp) or 0) > 0}
    if not ends:
        return 0
    reader = kafka_clients.consumer(kafka, client_id)
    applied = 0
    try:
        reader.assign(list(ends))
        reader.seek_to_beginning(*ends)
        while ends:
            for tp, records in reader.poll(timeout_ms=POLL_MS).items():
                for record in records:
                    if record.offset >= ends.get(tp, 0):
                        continue
                    try:
                        book.apply(orjson.loads(record.value))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue  # refused when it was first read, and dead-lettered then
                    applied += 1
            ends = {tp: end for tp, end in ends.items() if reader.position(tp) < end}
    finally:
        reader.close()
    return applied
