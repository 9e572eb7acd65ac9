"""The project's Kafka topics: names, partitions and retention from settings, created idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from dcpulse.kafka_clients import KafkaAccess, access, admin
from dcpulse.services.kafka_acls import grant, pipeline_grants
from dcpulse.settings import Settings, TopicSettings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    purpose: str
    compacted: bool = False  # a changelog: the newest value per key is kept, whatever its age

    def configs(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete"}


def topic_specs(settings: TopicSettings) -> list[TopicSpec]:
    """Every topic dcpulse owns. Keys are documented in docs/architecture.md."""
    raw_ms = settings.telemetry_retention_hours * 3_600_000
    derived_ms = settings.derived_retention_hours * 3_600_000
    return [
        TopicSpec(settings.telemetry, settings.telemetry_partitions, raw_ms,
                  "raw device samples from the agents"),
        TopicSpec(settings.telemetry_valid, settings.telemetry_partitions, raw_ms,
                  "samples that passed validation"),
        TopicSpec(settings.deadletter, settings.derived_partitions, derived_ms,
                  "rejected records and samples with reason and (bounded) original bytes"),
        TopicSpec(settings.partials, settings.derived_partitions, derived_ms,
                  "per raw partition and closed window, a site's partial sums (key: site)"),
        TopicSpec(settings.pue, settings.telemetry_partitions, derived_ms,
                  "PUE (categories 1-3), pPUE, WUE, ITUE/TUE per site and window"),
        TopicSpec(settings.utilisation, settings.telemetry_partitions, derived_ms,
                  "utilisation per rack, hall and site and window"),
        TopicSpec(settings.alerts, settings.derived_partitions, derived_ms,
                  "alert state changes (key: alert fingerprint)"),
    ]


def provision_pipeline(settings: Settings) -> list[str]:
    """As admin: the pipeline's topics (those missing) and its roles' ACLs. Returns the topics
    created."""
    kafka = access(settings, "admin")
    created = ensure_topics(kafka, topic_specs(settings.topics))
    grant(kafka, pipeline_grants(settings.topics))
    return created


def ensure_topics(kafka: KafkaAccess, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(kafka, "dcpulse-topics")
    try:
        existing = set(client.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            try:
                client.create_topics([NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1,
                                              topic_configs=spec.configs())])
                created.append(spec.name)
            except TopicAlreadyExistsError:  # another process created it meanwhile
                pass
        return created
    finally:
        client.close()
