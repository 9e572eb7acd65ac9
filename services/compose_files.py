"""What docker/compose.yaml's one-shot `dcpulse-secrets` and `dcpulse-influx-tokens` containers
write: the same secured broker and scoped tokens as `services up`, for containers (docs/security.md).

The broker container (the official apache/kafka image) runs our `server.properties`: a HOST
listener published on the host's 127.0.0.1:9092, an INTERNAL one for the dcpulse containers
(also the inter-broker listener) and the controller's, all TLS; logins created at format time
from `format.args`, a Java argument file, so no password is on a command line.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from dcpulse.kafka_clients import SASL_MECHANISM
from dcpulse.private_files import write_private
from dcpulse.services.kafka import cluster_id, render_server_properties
from dcpulse.services.kafka_security import BrokerSecrets
from dcpulse.services.onboarding import InfluxOnboarding
from dcpulse.settings import InfluxSettings, KafkaSettings

DATA_DIR = Path("/var/lib/kafka/data")
INTERNAL_PORT = 19092  # the dcpulse containers' listener, kafka:19092


def write_broker_files(secrets: BrokerSecrets, settings: KafkaSettings, service: str) -> None:
    """CA, certificate and logins (kept if present), then the broker's properties, its format
    arguments and the admin's Java client properties (for the container's health check)."""
    secrets.ensure(["127.0.0.1", service])
    listeners = {"INTERNAL": (f"0.0.0.0:{INTERNAL_PORT}", f"{service}:{INTERNAL_PORT}"),
                 "HOST": (f"0.0.0.0:{settings.port}", f"127.0.0.1:{settings.port}")}
    props = render_server_properties(settings, DATA_DIR, {
        **secrets.server_properties(listeners, f"0.0.0.0:{settings.controller_port}"),
        "controller.quorum.voters": f"1@{service}:{settings.controller_port}"})
    write_private(secrets.directory / "server.properties", props)
    write_private(secrets.directory / "format.args", secrets.format_arguments(
        cluster_id(secrets.directory / "cluster-id"), secrets.directory / "server.properties"))
    admin = secrets.login("admin")
    write_private(secrets.directory / "admin-client.properties", (
        f"security.protocol=SASL_SSL\nsasl.mechanism={SASL_MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin["username"]}" password="{admin["password"]}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={secrets.ca}\n"))


def write_influx_tokens(settings: InfluxSettings, admin_token: str, output: Path) -> None:
    """The write-only and read-only tokens of the dcpulse buckets, minted with the admin token
    into `output`/write-token and read-token (0600); kept if already there."""
    if (output / "write-token").exists() and (output / "read-token").exists():
        return
    with httpx.Client(base_url=settings.url, timeout=10.0, headers={"Authorization": f"Token {admin_token}"}) as http:
        orgs = http.get("/api/v2/orgs", params={"org": settings.org}).raise_for_status().json()["orgs"]
        if not orgs:
            raise RuntimeError(f"InfluxDB at {settings.url} has no org {settings.org!r}")
        write, read = InfluxOnboarding(settings, output / "credentials.json").scoped_tokens(http, orgs[0]["id"])
    write_private(output / "write-token", write)
    write_private(output / "read-token", read)
