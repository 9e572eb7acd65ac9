"""The provisioned broker's security (docs/security.md): TLS and SCRAM logins on the client
listener, mutual TLS on the controller's, and per-role ACLs on a pipeline's topics and groups.
kcat (librdkafka) is the independent client; kafka-python is dcpulse's own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import TopicPartition
from kafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError
from kafka.structs import OffsetAndMetadata
from pydantic import SecretStr

from dcpulse import kafka_clients
from dcpulse.kafka_clients import KafkaAccess, access
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import isolated, kcat_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (./run installs it with apt-get)"),
]


@pytest.fixture(scope="module")
def pipeline(services: LocalServices, settings: Settings) -> Iterator[Settings]:
    if settings.kafka.security != "sasl_ssl":
        pytest.skip("kafka.security is plaintext")
    with isolated(services, settings, "security") as sandboxed:
        yield sandboxed


def kcat(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    login = ["-F", str(config)] if config else []
    return subprocess.run(["kcat", *login, "-m", "8", *args], capture_output=True, text=True, timeout=60)


def list_metadata(settings: Settings, config: Path | None, bootstrap: str | None = None) -> subprocess.CompletedProcess[str]:
    return kcat(config, "-b", bootstrap or settings.kafka.bootstrap, "-L", "-t", settings.topics.telemetry)


def test_the_role_logins_list_metadata_over_tls(pipeline: Settings, tmp_path: Path) -> None:
    """The positive control for the refusals below: each role's login works."""
    for role in kafka_clients.ROLES:
        listed = list_metadata(pipeline, kcat_config(pipeline, role, tmp_path))
        assert listed.returncode == 0, (role, listed.stderr)
        assert pipeline.topics.telemetry in listed.stdout


def test_an_unauthenticated_client_is_refused(pipeline: Settings, tmp_path: Path) -> None:
    plaintext = list_metadata(pipeline, None)
    assert plaintext.returncode != 0 and pipeline.topics.telemetry not in plaintext.stdout
    tls_without_login = tmp_path / "tls-only.properties"
    tls_without_login.write_text(f"security.protocol=ssl\nssl.ca.location={pipeline.kafka_secrets_dir / 'ca.pem'}\n")
    refused = list_metadata(pipeline, tls_without_login)
    assert refused.returncode != 0 and pipeline.topics.telemetry not in refused.stdout
    with pytest.raises(KafkaError):  # kafka-python without a login: no broker answers it
        kafka_clients.admin(KafkaAccess(pipeline.kafka.bootstrap), "test-anonymous", request_timeout_ms=5000,
                            api_version_auto_timeout_ms=5000).list_topics()


def test_a_wrong_password_is_refused(pipeline: Settings, tmp_path: Path) -> None:
    real = access(pipeline, "agent")
    wrong = KafkaAccess(real.bootstrap, real.username, SecretStr("not-the-password"), real.ca_file)
    config = tmp_path / "wrong.properties"
    config.write_text(wrong.librdkafka_config())
    refused = list_metadata(pipeline, config)
    assert refused.returncode != 0 and "Authentication failed" in refused.stderr
    with pytest.raises(KafkaError):
        kafka_clients.admin(wrong, "test-wrong-password", request_timeout_ms=5000,
                            api_version_auto_timeout_ms=5000).list_topics()


def test_the_controller_listener_wants_a_certificate_from_our_ca(pipeline: Settings, tmp_path: Path) -> None:
    config = tmp_path / "controller.properties"
    config.write_text(f"security.protocol=ssl\nssl.ca.location={pipeline.kafka_secrets_dir / 'ca.pem'}\n")
    refused = list_metadata(pipeline, config, f"{pipeline.kafka.host}:{pipeline.kafka.controller_port}")
    assert refused.returncode != 0


def _send(settings: Settings, role: kafka_clients.Role, topic: str) -> None:
    producer = kafka_clients.producer(access(settings, role), f"test-{role}", max_block_ms=10_000)
    try:
        producer.send(topic, key=b"probe", value=b"{}").get(timeout=15)
    finally:
        producer.close(timeout=5)


def test_the_agent_writes_raw_telemetry_and_nothing_else(pipeline: Settings, tmp_path: Path) -> None:
    t = pipeline.topics
    _send(pipeline, "agent", t.telemetry)  # allowed: the control
    with pytest.raises(TopicAuthorizationFailedError):
        _send(pipeline, "agent", t.pue)
    agent = kcat_config(pipeline, "agent", tmp_path)
    read = kcat(agent, "-b", pipeline.kafka.bootstrap, "-C", "-t", t.telemetry, "-o", "beginning", "-e", "-q")
    assert read.returncode != 0 and "authoriz" in read.stderr.lower()
    admin = kafka_clients.admin(access(pipeline, "agent"), "test-agent-admin")
    try:
        admin.delete_topics([t.telemetry])
    except TopicAuthorizationFailedError:
        pass
    finally:
        admin.close()
    assert t.telemetry in list_metadata(pipeline, kcat_config(pipeline, "admin", tmp_path)).stdout


def test_the_sink_neither_produces_nor_reads_raw_telemetry(pipeline: Settings, tmp_path: Path) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        _send(pipeline, "sink", pipeline.topics.telemetry)
    sink = kcat_config(pipeline, "sink", tmp_path)
    read = kcat(sink, "-b", pipeline.kafka.bootstrap, "-C", "-t", pipeline.topics.telemetry, "-o", "beginning", "-e")
    assert read.returncode != 0 and "authoriz" in read.stderr.lower()


def test_the_agent_cannot_move_a_sinks_offsets(pipeline: Settings) -> None:
    consumer = kafka_clients.consumer(access(pipeline, "agent"), "test-agent-offsets",
                                      group_id=pipeline.topics.group("sink-raw"), request_timeout_ms=10_000)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            consumer.commit({TopicPartition(pipeline.topics.telemetry_valid, 0): OffsetAndMetadata(1000, "", -1)})
    finally:
        consumer.close(autocommit=False)


def test_simulate_to_a_topic_agents_may_not_write_fails_with_one_clear_line(pipeline: Settings) -> None:
    out = subprocess.run([sys.executable, "-m", "dcpulse.cli", "simulate", "--preset", "small", "--speed", "max",
                          "--duration", "1m", "--topic", pipeline.topics.pue], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert f"the agent role may not write {pipeline.topics.pue}" in out.stderr and "Traceback" not in out.stderr
