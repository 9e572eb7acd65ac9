from pathlib import Path

import pytest

from dcpulse.settings import Settings, masked_dump


def test_defaults_bind_loopback_and_version_topics() -> None:
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.influx.url == "http://127.0.0.1:8086"
    assert s.topics.telemetry == "dcpulse.telemetry.v2"
    assert s.topics.deadletter == "dcpulse.deadletter.v2"
    assert s.topics.partials == "dcpulse.site-partials.v1"
    assert s.topics.group("sink-raw") == "dcpulse-sink-raw"


def test_env_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCPULSE_KAFKA__PORT", "19092")
    monkeypatch.setenv("DCPULSE_INFLUX__BUCKETS__RAW_RETENTION_HOURS", "6")
    monkeypatch.setenv("DCPULSE_TOPICS__PREFIX", "test1")
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:19092"
    assert s.influx.buckets.retention_seconds()["dcpulse_raw"] == 6 * 3600
    assert s.topics.telemetry == "test1.telemetry.v2"


def test_toml_file_is_read_and_env_wins_over_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dcpulse.toml"
    cfg.write_text('[kafka]\nport = 29092\n[influx]\nport = 28086\norg = "ops"\n')
    monkeypatch.setenv("DCPULSE_CONFIG", str(cfg))
    monkeypatch.setenv("DCPULSE_INFLUX__PORT", "38086")
    s = Settings()
    assert s.kafka.port == 29092
    assert s.influx.org == "ops"
    assert s.influx.port == 38086


def test_missing_toml_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCPULSE_CONFIG", "/nonexistent/dcpulse.toml")
    with pytest.raises(FileNotFoundError, match="DCPULSE_CONFIG"):
        Settings()


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCPULSE_KAFKA__PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_masked_dump_never_contains_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCPULSE_ALERTMANAGER__WEBHOOK_URL", "https://oncall.example/hook?key=super-secret")
    s = Settings()
    assert s.alertmanager.webhook_url is not None
    assert s.alertmanager.webhook_url.get_secret_value().endswith("super-secret")
    dumped = masked_dump(s)
    assert "super-secret" not in str(dumped)
    assert dumped["alertmanager"]["webhook_url"] == "**********"
