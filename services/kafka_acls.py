"""What each role may do to one pipeline's topics and groups (a pipeline: one topic prefix).

Least privilege, as docs/security.md lists it: agents only produce raw telemetry; the stream
worker reads raw and its partials and writes its outputs, owns the topics and group under its
app id (changelogs, Faust's leader topic); the sinks read what they store, write dead letters
and commit their own groups. admin is a super user and needs no ACL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcpulse.kafka_clients import KafkaAccess, Role, admin
from dcpulse.settings import TopicSettings

Resource = Literal["topic", "group"]
Operation = Literal["read", "write", "all"]


@dataclass(frozen=True)
class Grant:
    role: Role
    operation: Operation
    resource: Resource
    name: str
    prefixed: bool = False  # the name is a prefix: every topic or group starting with it


def pipeline_grants(topics: TopicSettings) -> list[Grant]:
    t = topics
    worker_outputs = (t.telemetry_valid, t.deadletter, t.partials, t.pue, t.utilisation, t.alerts)
    sink_inputs = (t.telemetry_valid, t.pue, t.utilisation, t.alerts)
    streams = t.group("streams")  # the Faust app id: its group, and the prefix of its own topics
    return [
        Grant("agent", "write", "topic", t.telemetry),
        *(Grant("worker", "read", "topic", name) for name in (t.telemetry, t.partials)),
        *(Grant("worker", "write", "topic", name) for name in worker_outputs),
        Grant("worker", "all", "topic", f"{streams}-", prefixed=True),
        Grant("worker", "read", "group", streams),
        *(Grant("sink", "read", "topic", name) for name in sink_inputs),
        Grant("sink", "write", "topic", t.deadletter),
        Grant("sink", "read", "group", t.group("sink-"), prefixed=True),
    ]


def _acl(grant: Grant):  # -> kafka.admin.ACL
    from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern,
                             ResourceType)

    pattern = ResourcePattern(ResourceType.TOPIC if grant.resource == "topic" else ResourceType.GROUP, grant.name,
                              ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL)
    return ACL(f"User:{grant.role}", "*", getattr(ACLOperation, grant.operation.upper()), ACLPermissionType.ALLOW,
               pattern)


def grant(kafka: KafkaAccess, grants: list[Grant]) -> None:
    """Create these ACLs as admin (idempotent: the broker keeps one copy of each). Nothing to do
    on a plaintext broker, which has no authorizer."""
    if not kafka.secure:
        return
    client = admin(kafka, "dcpulse-acls")
    try:
        result = client.create_acls([_acl(g) for g in grants])
    finally:
        client.close()
    if result["failed"]:
        raise RuntimeError(f"creating Kafka ACLs failed: {result['failed'][0].__name__}")


def revoke(kafka: KafkaAccess, grants: list[Grant]) -> None:
    if not kafka.secure:
        return
    client = admin(kafka, "dcpulse-acls")
    try:
        client.delete_acls([_acl(g) for g in grants])
    finally:
        client.close()
