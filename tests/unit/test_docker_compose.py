"""docker/compose.yaml cannot run here (no Docker engine): check it agrees with the local setup."""

from pathlib import Path

import pytest
import yaml

from dcpulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_images_pin_the_same_versions_as_the_local_servers() -> None:
    s = Settings()
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{s.kafka.version}"
    assert SERVICES["influxdb"]["image"] == f"influxdb:{s.influx.version}"
    assert SERVICES["alertmanager"]["image"] == f"prom/alertmanager:v{s.alertmanager.version}"


def test_alertmanager_is_on_its_local_port_on_loopback_only_with_no_gossip_listener() -> None:
    am = SERVICES["alertmanager"]
    assert am["ports"] == [f"127.0.0.1:{Settings().alertmanager.port}:9093"]
    assert "--cluster.listen-address=" in am["command"]


@pytest.mark.parametrize("service, attr", [("kafka", "kafka"), ("influxdb", "influx")])
def test_ports_are_the_local_defaults_on_loopback_only(service: str, attr: str) -> None:
    port = getattr(Settings(), attr).port
    assert SERVICES[service]["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_every_dcpulse_env_var_names_a_real_setting() -> None:
    for name, service in SERVICES.items():
        for var in (service.get("environment") or {}):
            if not var.startswith("DCPULSE_"):
                continue
            node: type = Settings
            for part in var.removeprefix("DCPULSE_").lower().split("__"):
                assert part in node.model_fields, f"{name}: {var} is not a setting"
                node = node.model_fields[part].annotation
                node = getattr(node, "__args__", (node,))[0]


def test_influx_names_match_settings() -> None:
    s = Settings().influx
    env = SERVICES["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == s.org
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == s.buckets.raw
    assert env["DOCKER_INFLUXDB_INIT_RETENTION"] == f"{s.buckets.raw_retention_hours}h"
    init = (ROOT / "docker" / "influxdb-init" / "create-buckets.sh").read_text()
    assert f"--name {s.buckets.analytics} --retention {s.buckets.analytics_retention_days}d" in init
    assert f"--name {s.buckets.alerts} --retention {s.buckets.alerts_retention_days}d" in init


def test_dcpulse_containers_run_real_cli_commands() -> None:
    from click.testing import CliRunner

    from dcpulse.cli import main

    for name, service in SERVICES.items():
        if not name.startswith("dcpulse-"):
            continue
        argv = service["command"]
        assert argv[0] == "dcpulse"
        result = CliRunner().invoke(main, [*argv[1:], "--help"])
        assert result.exit_code == 0, f"{name}: {argv} -> {result.output}"


def test_dockerfile_copies_every_package_dir() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for folder in ("dcpulse", "producers", "streams", "sinks", "services", "views"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def test_long_running_containers_hold_no_admin_token_and_the_worker_no_token() -> None:
    """The admin token reaches only InfluxDB's own set-up and the one-shot that mints the scoped
    tokens (as a compose secret, a file); the worker gets no token, the sink only the write one's file."""
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        if name != "influxdb":
            assert not any("ADMIN_TOKEN" in str(v) for v in env.values()), name
    assert not [v for v in SERVICES["dcpulse-streams"]["volumes"] if "tokens" in v]
    assert SERVICES["dcpulse-sink"]["environment"]["DCPULSE_INFLUX__WRITE_TOKEN_FILE"] == "/tokens/write-token"
    assert "influx-tokens:/tokens:ro" in SERVICES["dcpulse-sink"]["volumes"]
    assert SERVICES["dcpulse-influx-tokens"]["secrets"] == ["influx-admin-token"]


def test_every_kafka_client_container_logs_in_from_the_secrets_volume() -> None:
    for name in ("dcpulse-topics", "dcpulse-streams", "dcpulse-sink"):
        service = SERVICES[name]
        assert service["environment"]["DCPULSE_KAFKA__SECRETS_DIR"] == "/secrets", name
        assert "kafka-secrets:/secrets:ro" in service["volumes"], name


def test_the_broker_runs_the_secured_properties_the_secrets_container_writes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dcpulse.cli import main

    kafka = SERVICES["kafka"]
    secrets_cmd = SERVICES["dcpulse-secrets"]["command"]
    assert secrets_cmd[:3] == ["dcpulse", "services", "kafka-files"] and secrets_cmd[3] == "/secrets"
    result = CliRunner().invoke(main, ["services", "kafka-files", str(tmp_path), *secrets_cmd[4:]])
    assert result.exit_code == 0, result.output
    props = dict(line.split("=", 1) for line in (tmp_path / "server.properties").read_text().splitlines())
    assert props["listener.security.protocol.map"] == "INTERNAL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SSL"
    assert props["advertised.listeners"] == "INTERNAL://kafka:19092,HOST://127.0.0.1:9092"
    assert SERVICES["dcpulse-topics"]["environment"]["DCPULSE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    for name in ("server.properties", "format.args", "admin.json", "broker.pem", "admin-client.properties"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    command = " ".join(kafka["command"])
    assert "@/secrets/format.args" in command and "/secrets/server.properties" in command
    assert "password" not in command and "admin-client.properties" in kafka["healthcheck"]["test"][1]
