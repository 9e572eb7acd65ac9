"""A restarted sink knows what fires: its alert book is rebuilt from the alerts topic up to the
offsets its group committed (sinks/alertlog.py), so suppression and re-posting carry on."""

from __future__ import annotations

import orjson
import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from dcpulse import kafka_clients
from dcpulse.kafka_clients import access
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.alertlog import rebuild
from dcpulse.streams.alertbook import AlertBook
from dcpulse.streams.alerting import AlertEvent, fingerprint
from dcpulse.streams.alertrules import inhibitions, load_rules
from dcpulse.streams.alertstate import Transition
from tests.integration.support import isolated

pytestmark = pytest.mark.integration
T0 = 1_782_864_000_000


def _event(labels: dict[str, str], old: str, new: str, seconds: int) -> AlertEvent:
    return AlertEvent(labels["alertname"], fingerprint(labels), labels, {},
                      Transition(T0 + seconds * 1000, old, new, False, resolved=new == "inactive"), 1.0)  # type: ignore[arg-type]


def test_the_book_is_rebuilt_from_the_committed_transitions_only(services: LocalServices, settings: Settings) -> None:
    pump = {"alertname": "cdu_pump_redundancy_lost", "severity": "warning", "site": "s", "device": "c1",
            "kind": "cdu", "cdu": "c1"}
    hot = {"alertname": "accelerator_temperature_high", "severity": "warning", "site": "s", "device": "srv-1",
           "kind": "server", "cdu": "c1", "metric": "acc0_temp_c"}
    leak = {"alertname": "coolant_leak", "severity": "critical", "site": "s", "device": "leak-c2", "kind": "leak_sensor",
            "cdu": "c2"}
    committed = [_event(pump, "inactive", "firing", 0), _event(hot, "inactive", "firing", 30),
                 _event(leak, "inactive", "firing", 40), _event(leak, "firing", "inactive", 50)]
    later = [_event(pump, "firing", "inactive", 90)]  # not committed: the restarted sink reads it next
    with isolated(services, settings, "book") as sandboxed:
        topic, group_id = sandboxed.topics.alerts, sandboxed.topics.group("sink-alerts")
        producer = kafka_clients.producer(access(sandboxed, "admin"), "test-book")
        sent = [producer.send(topic, key=e.fingerprint.encode(), value=orjson.dumps(e.to_json()))
                for e in committed + later]
        producer.flush()
        producer.close()
        offsets = [future.get(timeout=10) for future in sent]
        group = kafka_clients.consumer(access(sandboxed, "admin"), "test-book", group_id=group_id)
        ends: dict[TopicPartition, int] = {}
        for meta in offsets[:len(committed)]:
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
        group.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
        book = AlertBook(inhibitions(load_rules()))
        applied = rebuild(access(sandboxed, "admin"), "test-book-rebuild", group, topic, book)
        group.close()
    assert applied == len(committed)  # the pump's later resolution lies past the committed offsets
    assert set(book.active) == {fingerprint(pump), fingerprint(hot)}
    assert book.active[fingerprint(hot)]["inhibited_by"] == [fingerprint(pump)]
