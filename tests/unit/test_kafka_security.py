"""The broker's security material and the roles' ACLs, without a broker."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from dcpulse.kafka_clients import KafkaAccess, access
from dcpulse.private_files import write_private
from dcpulse.services.kafka_acls import Grant, pipeline_grants
from dcpulse.services.kafka_security import BrokerSecrets, make_certificates
from dcpulse.settings import Settings, TopicSettings


def test_the_broker_certificate_is_signed_by_the_ca_for_its_names() -> None:
    ca_pem, broker_pem = make_certificates(["127.0.0.1", "kafka"], dt.datetime.now(dt.timezone.utc))
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    broker = x509.load_pem_x509_certificates(broker_pem.encode())[0]
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "kafka"}
    assert "BEGIN PRIVATE KEY" in broker_pem  # PKCS#8, what Kafka's PEM key store reads
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_secrets_are_owner_only_kept_across_runs_and_passwords_differ(tmp_path: Path) -> None:
    secrets = BrokerSecrets(tmp_path / "secrets")
    secrets.ensure(["127.0.0.1"])
    first = {p.name: p.read_bytes() for p in secrets.directory.iterdir()}
    secrets.ensure(["127.0.0.1"])
    assert {p.name: p.read_bytes() for p in secrets.directory.iterdir()} == first
    assert secrets.directory.stat().st_mode & 0o077 == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in secrets.directory.iterdir())
    passwords = [json.loads(first[f"{role}.json"])["password"] for role in ("admin", "agent", "worker", "sink", "broker")]
    assert len(set(passwords)) == 5 and all(len(p) >= 32 for p in passwords)
    args = secrets.scram_arguments()
    assert args.count("--add-scram") == 5 and f"SCRAM-SHA-512=[name=agent,password={passwords[1]}]" in args


def test_server_properties_secure_every_listener_and_deny_by_default(tmp_path: Path) -> None:
    secrets = BrokerSecrets(tmp_path)
    secrets.ensure(["127.0.0.1"])
    props = secrets.server_properties({"SASL_SSL": ("127.0.0.1:9092", "127.0.0.1:9092")}, "127.0.0.1:9093")
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"].split(";") == ["User:admin", "User:broker", "User:CN=dcpulse-broker"]


def test_each_role_gets_only_its_pipelines_topics_and_groups() -> None:
    t = TopicSettings(prefix="p")
    grants = pipeline_grants(t)
    by_role = {role: {(g.operation, g.resource, g.name, g.prefixed) for g in grants if g.role == role}
               for role in ("agent", "worker", "sink")}
    assert by_role["agent"] == {("write", "topic", "p.telemetry.v2", False)}
    assert ("read", "topic", "p.telemetry.v2", False) not in by_role["sink"]
    assert not [g for g in by_role["sink"] if g[0] == "write" and g[2] != t.deadletter]
    assert ("read", "group", "p-streams", False) in by_role["worker"]
    assert ("all", "topic", "p-streams-", True) in by_role["worker"]
    assert ("read", "group", "p-sink-", True) in by_role["sink"]
    assert all(g.name.startswith("p") for g in grants) and not [g for g in grants if g.role == "admin"]
    assert Grant("worker", "write", "topic", t.pue) in grants and Grant("worker", "write", "topic", t.telemetry) not in grants


def test_a_login_never_shows_its_password() -> None:
    login = KafkaAccess("127.0.0.1:9092", "agent", SecretStr("s3cret-pass"), Path("/ca.pem"))
    assert "s3cret" not in repr(login) and "s3cret" not in str(login)
    assert login.client_config()["sasl_plain_password"] == "s3cret-pass"
    assert "sasl.password=s3cret-pass" in login.librdkafka_config()
    assert KafkaAccess("127.0.0.1:9092").client_config() == {"bootstrap_servers": "127.0.0.1:9092"}


def test_a_role_without_a_login_file_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCPULSE_SERVICES__STATE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="no Kafka login for role 'sink'.*services up"):
        access(Settings(), "sink")
    monkeypatch.setenv("DCPULSE_KAFKA__SECURITY", "plaintext")
    assert not access(Settings(), "sink").secure


def test_private_files_are_0600_even_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "d" / "token"
    path.parent.mkdir()
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", [["topics", "create"], ["streams"], ["sink"]])
def test_commands_without_their_login_say_how_to_get_it_in_one_line(command: list[str], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dcpulse.cli import main
    from dcpulse.settings import get_settings

    monkeypatch.setenv("DCPULSE_SERVICES__STATE_DIR", str(tmp_path))
    get_settings.cache_clear()  # the CLI's settings are cached: another test's would have real logins
    try:
        result = CliRunner().invoke(main, command)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "run `dcpulse services up`" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
