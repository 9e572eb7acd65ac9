"""How every dcpulse process reaches Kafka: who it is (its role's login) and the kafka-python
client configurations, written once, here.

With `kafka.security = "sasl_ssl"` (the default) each process logs in as its role's principal
over TLS: agents may only produce raw telemetry, the stream worker reads raw and writes its
outputs, the sinks read what they store; admin creates topics and ACLs (docs/security.md).
Passwords come from the role's file in the secrets directory, never from the environment or a
command line, so no `ps eww` shows them.

Producers are durable and ordered (acks=all, idempotence: per-partition order survives
retries), compress with zstd and batch with a short linger. Consumers never auto-commit: each
stage commits only what it has made durable.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import SecretStr

from dcpulse.private_files import MissingSecret
from dcpulse.settings import Settings

Role = Literal["admin", "agent", "worker", "sink"]
ROLES: tuple[Role, ...] = ("admin", "agent", "worker", "sink")
SASL_MECHANISM = "SCRAM-SHA-512"

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "compression_type": "zstd",  # as tight as gzip here at a fraction of its CPU
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "max_request_size": 2 * 1024 * 1024,
}


@dataclass(frozen=True)
class KafkaAccess:
    """The broker's address and, on a secured broker, one principal's login and the CA to trust."""

    bootstrap: str
    username: str | None = None  # None: a plaintext broker
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @property
    def secure(self) -> bool:
        return self.username is not None

    def client_config(self) -> dict[str, Any]:
        """kafka-python's connection keywords (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        if not self.secure:
            return {"bootstrap_servers": self.bootstrap}
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "SASL_SSL",
                "sasl_mechanism": SASL_MECHANISM, "sasl_plain_username": self.username,
                "sasl_plain_password": self.password_text(), "ssl_cafile": str(self.ca_file),
                "ssl_check_hostname": True}

    def ssl_context(self) -> ssl.SSLContext:
        """Trust only our CA, and check the broker's name (aiokafka and Faust take a context)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def librdkafka_config(self) -> str:
        """The same login as librdkafka properties (kcat -F <file>): write it 0600."""
        if not self.secure:
            return "security.protocol=plaintext\n"
        return (f"security.protocol=sasl_ssl\nsasl.mechanisms={SASL_MECHANISM}\nsasl.username={self.username}\n"
                f"sasl.password={self.password_text()}\nssl.ca.location={self.ca_file}\n")

    def password_text(self) -> str:
        """The password itself, for a client library's configuration only."""
        assert self.password is not None
        return self.password.get_secret_value()


def credentials_file(secrets_dir: Path, role: str) -> Path:
    return secrets_dir / f"{role}.json"


def access(settings: Settings, role: Role) -> KafkaAccess:
    """How a process of `role` connects: plaintext, or its role's login from the secrets dir."""
    bootstrap = settings.kafka.bootstrap
    if settings.kafka.security == "plaintext":
        return KafkaAccess(bootstrap)
    secrets = settings.kafka_secrets_dir
    path = credentials_file(secrets, role)
    try:
        login = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingSecret(f"no Kafka login for role {role!r} in {secrets}: run `dcpulse services up` "
                           "(or set kafka.security = \"plaintext\" for a broker without logins)") from None
    return KafkaAccess(bootstrap, login["username"], SecretStr(login["password"]), secrets / "ca.pem")


def producer(kafka: KafkaAccess, client_id: str, **overrides: Any) -> KafkaProducer:
    return KafkaProducer(client_id=client_id, **kafka.client_config(), **{**PRODUCER_DEFAULTS, **overrides})


def consumer(kafka: KafkaAccess, client_id: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest", **overrides}
    return KafkaConsumer(*topics, client_id=client_id, **kafka.client_config(), **config)


def admin(kafka: KafkaAccess, client_id: str, **overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(client_id=client_id, **kafka.client_config(), **overrides)
