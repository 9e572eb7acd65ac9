"""Pure parts of the server provisioner: rendered configs, cache semantics, process guard."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcpulse.services import cache
from dcpulse.services.influxdb import flux_version_from_go_mod, influxd_argv, render_flux_pc
from dcpulse.services.kafka import _kafka_cluster_id, render_pom, render_server_properties
from dcpulse.services.onboarding import Credentials, bucket_permissions, load_credentials, save_credentials
from dcpulse.services.process import ManagedProcess
from dcpulse.services.topics import topic_specs
from dcpulse.settings import Settings


def test_pom_pins_kafka_and_a_logging_backend() -> None:
    pom = render_pom("3.9.1", "2.13")
    assert "<artifactId>kafka_2.13</artifactId><version>3.9.1</version>" in pom
    assert "slf4j-reload4j" in pom and "<packaging>pom</packaging>" in pom


def test_server_properties_listen_on_loopback_only(tmp_path: Path) -> None:
    from dcpulse.services.kafka_security import BrokerSecrets

    s = Settings().kafka
    props = dict(
        line.split("=", 1) for line in render_server_properties(s, tmp_path, {}).splitlines()
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    secrets = BrokerSecrets(tmp_path / "secrets")
    secrets.ensure([s.host])
    secured = secrets.server_properties({"SASL_SSL": ("127.0.0.1:9092", "127.0.0.1:9092")}, "127.0.0.1:9093")
    secure = dict(line.split("=", 1) for line in render_server_properties(s, tmp_path, secured).splitlines())
    assert secure["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"


def test_cluster_id_is_a_base64url_uuid() -> None:
    cid = _kafka_cluster_id()
    assert len(cid) == 22 and "=" not in cid and cid != _kafka_cluster_id()


def test_flux_version_is_read_from_go_mod() -> None:
    go_mod = "module x\n\nrequire (\n\tgithub.com/influxdata/cron v0.0.0\n\tgithub.com/influxdata/flux v0.196.1\n)\n"
    assert flux_version_from_go_mod(go_mod) == "v0.196.1"
    assert flux_version_from_go_mod("require github.com/influxdata/flux v0.1.0\n") == "v0.1.0"
    with pytest.raises(ValueError):
        flux_version_from_go_mod("module x\nrequire github.com/influxdata/fluxx v1\n")


def test_flux_pc_points_cgo_at_the_static_lib(tmp_path: Path) -> None:
    pc = render_flux_pc(tmp_path / "lib", tmp_path / "inc", "v0.196.1")
    assert f"-L{tmp_path / 'lib'} -lflux" in pc
    assert f"Cflags: -I{tmp_path / 'inc'}" in pc
    assert "-ldl" in pc


def test_influxd_binds_loopback_and_keeps_data_in_state_dir(tmp_path: Path) -> None:
    argv = influxd_argv(Path("/bin/influxd"), Settings().influx, tmp_path)
    assert "--http-bind-address=127.0.0.1:8086" in argv
    assert f"--bolt-path={tmp_path / 'influxd.bolt'}" in argv
    assert "--reporting-disabled" in argv


def test_cache_marks_complete_only_after_success(tmp_path: Path) -> None:
    final = cache.artefact_dir(tmp_path, "thing", "1.0")
    with cache.building(final, {"v": "1.0"}) as scratch:
        (scratch / "bin").write_text("ok")
        assert not cache.is_complete(final)
    assert cache.is_complete(final)
    assert (final / "bin").read_text() == "ok"
    assert cache.read_manifest(final)["v"] == "1.0"


def test_failed_build_leaves_nothing_a_later_run_would_trust(tmp_path: Path) -> None:
    final = cache.artefact_dir(tmp_path, "thing", "2.0")
    with pytest.raises(RuntimeError):
        with cache.building(final, {}) as scratch:
            (scratch / "half").write_text("half-built")
            raise RuntimeError("compiler died")
    assert not final.exists()
    assert list((tmp_path / "thing").iterdir()) == []


def test_unmarked_leftover_is_replaced(tmp_path: Path) -> None:
    final = cache.artefact_dir(tmp_path, "thing", "3.0")
    final.mkdir(parents=True)
    (final / "stale").write_text("from an interrupted build")
    assert not cache.is_complete(final)
    with cache.building(final, {}) as scratch:
        (scratch / "fresh").write_text("new")
    assert not (final / "stale").exists() and (final / "fresh").exists()


@pytest.mark.parametrize("name,version", [("", "1"), ("a/b", "1"), ("a", "")])
def test_bad_cache_keys_are_refused(tmp_path: Path, name: str, version: str) -> None:
    with pytest.raises(ValueError):
        cache.artefact_dir(tmp_path, name, version)


def test_managed_process_start_stop_and_foreign_pid(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-arg")
    proc = ManagedProcess("sleeper", tmp_path / "sleeper.pid", marker=marker)
    pid = proc.start([sys.executable, "-c", "import time; time.sleep(60)", marker],
                     cwd=tmp_path, log_file=tmp_path / "sleeper.log")
    assert proc.pid() == pid and proc.is_running()
    assert proc.stop(grace_s=5).startswith("stopped")
    assert not proc.is_running() and not proc.pid_file.exists()
    # A PID file naming someone else's process (PID reuse) must never be signalled.
    other = subprocess.Popen(["sleep", "30"])
    try:
        proc.pid_file.write_text(str(other.pid))
        assert proc.pid() is None
        assert proc.stop(grace_s=1) == "not running"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_managed_process_sigkill_after_grace(tmp_path: Path) -> None:
    marker = str(tmp_path / "stubborn")
    proc = ManagedProcess("stubborn", tmp_path / "s.pid", marker=marker)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc.start([sys.executable, "-c", code, marker], cwd=tmp_path, log_file=tmp_path / "s.log")
    for _ in range(50):
        if "ready" in (tmp_path / "s.log").read_text():
            break
        time.sleep(0.1)
    assert proc.stop(grace_s=1).startswith("killed")
    assert not proc.is_running()


def test_credentials_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "influxdb" / "credentials.json"
    creds = Credentials("org1", "admin-tok", "pw", "write-tok", "read-tok")
    save_credentials(path, creds)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_credentials(path) == creds
    assert load_credentials(tmp_path / "absent.json") is None


def test_bucket_permissions_are_scoped_to_the_given_buckets() -> None:
    perms = bucket_permissions(("write",), "org1", ["b1", "b2"])
    assert perms == [
        {"action": "write", "resource": {"type": "buckets", "id": "b1", "orgID": "org1"}},
        {"action": "write", "resource": {"type": "buckets", "id": "b2", "orgID": "org1"}},
    ]


def test_topic_specs_follow_settings() -> None:
    s = Settings().topics.model_copy(update={"telemetry_partitions": 4, "telemetry_retention_hours": 2})
    specs = {spec.name: spec for spec in topic_specs(s)}
    raw = specs["dcpulse.telemetry.v2"]
    assert raw.partitions == 4 and raw.configs()["retention.ms"] == str(2 * 3_600_000)
    assert all(name.startswith("dcpulse.") and name[-3:] in (".v1", ".v2") for name in specs)


def test_a_process_reads_only_its_tokens_file_never_the_admin_credentials(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dcpulse.services.onboarding import credentials_path, influx_token
    from dcpulse.settings import Settings

    monkeypatch.setenv("DCPULSE_SERVICES__STATE_DIR", str(tmp_path))
    save_credentials(credentials_path(tmp_path), Credentials("org", "admin-tok", "pw", "write-tok", "read-tok"))
    with pytest.raises(RuntimeError, match="no InfluxDB read token in .*read-token"):
        influx_token(Settings(), "read")  # credentials.json (with the admin token) is not a fallback
    (tmp_path / "influxdb" / "read-token").write_text("read-tok\n")
    assert influx_token(Settings(), "read") == "read-tok"
    other = tmp_path / "elsewhere"
    other.write_text("another")
    monkeypatch.setenv("DCPULSE_INFLUX__READ_TOKEN_FILE", str(other))
    assert influx_token(Settings(), "read") == "another"
