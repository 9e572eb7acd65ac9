"""The local servers: health, loopback-only listeners, topics, scoped tokens, idempotent up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.services.topics import topic_specs
from dcpulse.settings import Settings
from tests.integration.support import isolated

pytestmark = pytest.mark.integration


def test_both_servers_healthy_with_versions(services: LocalServices, settings: Settings) -> None:
    status = {row.name: row for row in services.status()}
    assert status["kafka"].healthy and status["influxdb"].healthy
    assert status["kafka"].version == settings.kafka.version
    assert status["influxdb"].version == f"v{settings.influx.version}"
    assert status["kafka"].pid and status["influxdb"].pid


def test_second_up_is_idempotent(services: LocalServices) -> None:
    pids = {row.name: row.pid for row in services.status()}
    assert services.up(lambda _msg: None) == []
    assert {row.name: row.pid for row in services.status()} == pids


def _listening_addresses(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


@pytest.mark.parametrize("name", ["kafka", "influxdb"])
def test_servers_listen_on_loopback_only(services: LocalServices, name: str) -> None:
    pid = {row.name: row.pid for row in services.status()}[name]
    assert pid is not None
    addresses = _listening_addresses(pid)
    assert addresses, f"{name} (pid {pid}) has no listening socket"
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        assert host in {"127.0.0.1", "::ffff:127.0.0.1"}, f"{name} listens on {address}"


def test_topics_exist_with_configured_partitions_and_retention(services: LocalServices, settings: Settings) -> None:
    admin = KafkaAdminClient(**access(settings, "admin").client_config())
    try:
        specs = topic_specs(settings.topics)
        described = {t["name"]: t for t in admin.describe_topics([s.name for s in specs])}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
        )["topic"]
    finally:
        admin.close()
    for spec in specs:
        assert len(described[spec.name]["partitions"]) == spec.partitions
        assert configs[spec.name]["retention.ms"]["value"] == str(spec.retention_ms)


def _client(settings: Settings, token: str) -> InfluxDBClient:
    return InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=10_000)


def test_buckets_exist_with_retention(services: LocalServices, settings: Settings) -> None:
    with _client(settings, services.credentials().admin_token) as client:
        buckets = {b.name: b for b in client.buckets_api().find_buckets(org=settings.influx.org).buckets}
    for name, seconds in settings.influx.buckets.retention_seconds().items():
        assert buckets[name].retention_rules[0].every_seconds == seconds


def test_write_token_cannot_query(services: LocalServices, settings: Settings) -> None:
    creds = services.credentials()
    bucket = settings.influx.buckets.raw
    with _client(settings, creds.write_token) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket, record=Point("token_check").field("v", 1.0))
        with pytest.raises(ApiException) as denied:
            client.query_api().query(f'from(bucket: "{bucket}") |> range(start: -1h)')
    assert denied.value.status in (401, 403, 404)


def test_read_token_cannot_write(services: LocalServices, settings: Settings) -> None:
    creds = services.credentials()
    bucket = settings.influx.buckets.raw
    with _client(settings, creds.read_token) as client:
        client.query_api().query(f'from(bucket: "{bucket}") |> range(start: -1h) |> limit(n: 1)')
        with pytest.raises(ApiException) as denied:
            client.write_api(write_options=SYNCHRONOUS).write(bucket, record=Point("token_check").field("v", 1.0))
    assert denied.value.status in (401, 403, 404)


def test_admin_token_not_in_any_log(services: LocalServices) -> None:
    creds = services.credentials()
    for path in services.log_files().values():
        text = path.read_text(errors="replace")
        for secret in (creds.admin_token, creds.write_token, creds.read_token, creds.admin_password):
            assert secret not in text


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_the_servers_inherit_no_dcpulse_setting_and_no_token(services: LocalServices) -> None:
    """Servers used to get a copy of our whole environment: DCPULSE_* settings, and the admin
    token whenever a sandbox had put it there, readable with `ps eww`."""
    creds = services.credentials()
    for row in services.status():
        assert row.pid is not None, row.name
        environ = _environ(row.pid)
        assert not [k for k in environ if k.startswith("DCPULSE_")], f"{row.name}: {sorted(environ)}"
        assert not {creds.admin_token, creds.write_token, creds.read_token} & set(environ.values()), row.name


def test_a_sandbox_runs_on_its_own_least_privilege_tokens(services: LocalServices, settings: Settings) -> None:
    """Tests and benchmarks give their pipeline write-only and read-only tokens of their own buckets:
    never the admin token (which can do anything, delete included)."""
    admin = services.credentials().admin_token
    with isolated(services, settings, "tokens") as sandboxed:
        write, read = (influx_token(sandboxed, "write"), influx_token(sandboxed, "read"))
        assert admin not in (write, read)
        with _client(sandboxed, write) as client:
            client.write_api(write_options=SYNCHRONOUS).write(sandboxed.influx.buckets.raw,
                                                              record=Point("token_check").field("v", 1.0))
            with pytest.raises(ApiException) as elsewhere:  # the standard bucket is not its to write
                client.write_api(write_options=SYNCHRONOUS).write(settings.influx.buckets.raw,
                                                                  record=Point("token_check").field("v", 1.0))
        assert elsewhere.value.status in (401, 403, 404)
        with _client(sandboxed, read) as client:
            assert client.query_api().query(f'from(bucket: "{sandboxed.influx.buckets.raw}") |> range(start: -1h)')
            with pytest.raises(ApiException):
                client.write_api(write_options=SYNCHRONOUS).write(sandboxed.influx.buckets.raw,
                                                                  record=Point("token_check").field("v", 1.0))


def test_pipeline_stages_get_only_the_tokens_they_need(services: LocalServices, settings: Settings,
                                                       tmp_path: Path) -> None:
    with isolated(services, settings, "stage-env") as sandboxed, running_pipeline(sandboxed, log_dir=tmp_path) as pipe:
        worker, sink = _environ(pipe.procs["streams-1"].pid), _environ(pipe.procs["sink"].pid)
    assert not {"DCPULSE_INFLUX__WRITE_TOKEN_FILE", "DCPULSE_INFLUX__READ_TOKEN_FILE"} & worker.keys()
    assert "DCPULSE_INFLUX__WRITE_TOKEN_FILE" in sink and "DCPULSE_INFLUX__READ_TOKEN_FILE" not in sink


def _secrets(services: LocalServices, *settings: Settings) -> dict[str, str]:
    """Every password and token dcpulse holds: Kafka logins, InfluxDB credentials, sandboxes' tokens."""
    creds = services.credentials()
    found = {"influx admin token": creds.admin_token, "influx admin password": creds.admin_password,
             "influx write token": creds.write_token, "influx read token": creds.read_token}
    for s in settings:
        found |= {f"{s.topics.prefix} {access} token": influx_token(s, access) for access in ("write", "read")}
        for path in s.kafka_secrets_dir.glob("*.json"):
            found[f"kafka {path.stem} password"] = json.loads(path.read_text())["password"]
    return found


def _process_text(pid: int) -> str:
    proc = Path(f"/proc/{pid}")
    return (proc / "cmdline").read_bytes().decode(errors="replace") + (proc / "environ").read_bytes().decode(errors="replace")


def test_no_password_or_token_in_any_process_log_or_config_show(services: LocalServices, settings: Settings,
                                                               tmp_path: Path) -> None:
    """`ps eww` of every process dcpulse starts (servers, stream worker, sink), every log they
    write and `dcpulse config show`: no secret in any of them."""
    with isolated(services, settings, "leaks") as sandboxed, running_pipeline(sandboxed, log_dir=tmp_path) as pipe:
        secrets = _secrets(services, settings, sandboxed)
        assert len(secrets) == 13 and all(secrets.values())  # 4 onboarding, 2 x 2 tokens, 5 Kafka logins
        pids = {row.name: row.pid for row in services.status()} | {n: p.pid for n, p in pipe.procs.items()}
        seen = {name: _process_text(pid) for name, pid in pids.items() if pid is not None}
        shown = subprocess.run([sys.executable, "-m", "dcpulse.cli", "config", "show"], capture_output=True,
                               text=True, check=True).stdout
    assert {"kafka", "influxdb", "streams-1", "sink"} <= seen.keys()
    assert "secrets" in shown  # the positive control: the settings were shown
    logs = {str(p): p.read_text(errors="replace") for p in
            [*services.log_files().values(), *tmp_path.glob("*.log"), services.kafka.state / "format.log"]}
    assert any("Kafka Server started" in text for text in logs.values())
    for where, text in {**seen, **logs, "config show": shown}.items():
        leaked = [what for what, secret in secrets.items() if secret in text]
        assert not leaked, f"{where}: {leaked}"
