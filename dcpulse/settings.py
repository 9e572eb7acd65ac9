"""The one configuration object: defaults, then an optional TOML file, then DCPULSE_* env vars.

Nested fields use a double underscore: DCPULSE_KAFKA__PORT=19092, DCPULSE_INFLUX__PORT=18086.
The TOML file is taken from DCPULSE_CONFIG (or `--config` on the CLI) and uses the same
sections: [kafka], [influx], [topics], [services].
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dcpulse.contract import MAX_MESSAGE_BYTES

CONFIG_ENV_VAR = "DCPULSE_CONFIG"


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


class KafkaSettings(BaseModel):
    version: str = Field("3.9.1", description="Apache Kafka release resolved from Maven Central")
    scala_version: str = "2.13"
    host: str = Field("127.0.0.1", description="Listen and connect address (loopback only)")
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    heap_mb: int = Field(1024, ge=256, description="JVM -Xmx in MiB; -Xms is half of it")
    bootstrap_servers: str | None = Field(
        None, description="Override to use an existing cluster instead of the local broker"
    )
    security: Literal["sasl_ssl", "plaintext"] = Field(
        "sasl_ssl", description="sasl_ssl: TLS with SCRAM-SHA-512 logins and per-role ACLs (docs/security.md); "
                                "plaintext: anyone who reaches the port may do anything, for quick local runs only"
    )
    secrets_dir: Path | None = Field(
        None, description="The CA certificate and one credentials file per role (0600); "
                          "default: <services.state_dir>/kafka/secrets, written by `services up`"
    )

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class BucketSettings(BaseModel):
    raw: str = "dcpulse_raw"
    analytics: str = "dcpulse_analytics"
    alerts: str = "dcpulse_alerts"
    raw_retention_hours: int = Field(72, ge=1, description="Raw telemetry: short retention")
    analytics_retention_days: int = Field(400, ge=1, description="PUE/utilisation: long")
    alerts_retention_days: int = Field(400, ge=1, description="Alert history: long")

    def retention_seconds(self) -> dict[str, int]:
        return {
            self.raw: self.raw_retention_hours * 3600,
            self.analytics: self.analytics_retention_days * 86400,
            self.alerts: self.alerts_retention_days * 86400,
        }


class InfluxSettings(BaseModel):
    version: str = Field("2.7.12", description="InfluxDB OSS release built from its Go module")
    host: str = "127.0.0.1"
    port: int = Field(8086, ge=1, le=65535)
    url_override: str | None = Field(None, description="Use an existing InfluxDB instead")
    org: str = "dcpulse"
    admin_user: str = "dcpulse-admin"
    buckets: BucketSettings = BucketSettings()
    # Tokens are read from files (0600), never taken from the environment, where `ps eww` shows them.
    write_token_file: Path | None = Field(None, description="The sink's write-only token; default: "
                                          "<services.state_dir>/influxdb/write-token, minted at onboarding")
    read_token_file: Path | None = Field(None, description="The read-only token of queries, console and reports; "
                                         "default: <services.state_dir>/influxdb/read-token")

    @property
    def url(self) -> str:
        return self.url_override or f"http://{self.host}:{self.port}"


class TopicSettings(BaseModel):
    prefix: str = Field("dcpulse", description="Common prefix of every topic name")
    telemetry_partitions: int = Field(12, ge=1, description="Raw and valid telemetry: the most "
                                      "stream workers that can share one site's load")
    derived_partitions: int = Field(3, ge=1)
    telemetry_retention_hours: int = Field(24, ge=1)
    derived_retention_hours: int = Field(168, ge=1)

    def name(self, stream: str, version: int = 1) -> str:
        return f"{self.prefix}.{stream}.v{version}"

    @property
    def telemetry(self) -> str:
        return self.name("telemetry", 2)

    @property
    def telemetry_valid(self) -> str:
        return self.name("telemetry-valid", 2)

    @property
    def deadletter(self) -> str:
        return self.name("deadletter", 2)

    @property
    def partials(self) -> str:
        """Per raw partition and closed window, a site's partial sums, keyed by site."""
        return self.name("site-partials")

    def group(self, role: str) -> str:
        """A consumer group of this pipeline: isolated pipelines (a sandbox, a second tenant)
        never join each other's groups."""
        return f"{self.prefix}-{role}"

    @property
    def pue(self) -> str:
        return self.name("pue")

    @property
    def alerts(self) -> str:
        """Alert state changes, keyed by alert fingerprint."""
        return self.name("alerts")

    @property
    def utilisation(self) -> str:
        return self.name("utilisation")


class AnalyticsSettings(BaseModel):
    window_s: int = Field(60, ge=10, description="Tumbling window, aligned to UTC")
    allowed_lateness_s: float = Field(30.0, ge=0, description="A window closes once the site's watermark is this far "
                                      "past its end: more than the agents' sample interval, since a register's "
                                      "energy needs its first sample after the end")
    rollups_s: tuple[int, ...] = Field((900, 3600), description="Roll-ups from minute energies")
    coverage_complete: float = Field(0.99, gt=0, le=1)
    coverage_usable: float = Field(0.9, gt=0, le=1)
    meter_forget_s: float = Field(3600.0, gt=0, description="A meter silent this long is no longer expected")
    max_gap_windows: int = Field(1440, ge=1, description="Skip, not emit, empty windows beyond this jump")
    batch_max_records: int = Field(2000, ge=1, description="Records the worker handles per batch at most")
    batch_max_s: float = Field(0.5, gt=0, description="Longest wait to fill a batch (adds at most this to latency)")
    state_buckets: int = Field(256, ge=1, description="Changelog entries per partition's state; "
                                                      "fixed for the life of a changelog")


class ServicesSettings(BaseModel):
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "dcpulse",
        description="Resolved jars and built binaries, keyed by version",
    )
    state_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state") / "dcpulse",
        description="Server data, logs, PID files and credentials",
    )
    start_timeout_s: float = Field(120.0, gt=0)
    stop_grace_s: float = Field(30.0, gt=0)


class ValidationSettings(BaseModel):
    """The stage's validation rules (docs/architecture.md, section Validation)."""

    max_clock_skew_s: float = Field(
        60.0, ge=0, description="A record this far ahead of its partition's clock is dead-lettered clock_skew"
    )
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES, ge=1, description="Larger raw messages are dead-lettered oversize before parsing"
    )
    max_producer_pause_s: float = Field(
        86_400.0, ge=0, description="At most this much producer time since a site's last watermark widens "
                                    "the clock-skew bound; a watermark jumping further waits for the next "
                                    "to confirm it"
    )


class SinkSettings(BaseModel):
    """`dcpulse sink`: its place in the sinks' consumer groups."""

    instance: str = Field("1", pattern=r"^[A-Za-z0-9._-]+$", description="This sink's static member name in its "
                          "groups: unique among a pipeline's sinks running at once; a sink restarted (even after "
                          "kill -9) with the same name gets its partitions back at once")
    session_timeout_s: float = Field(10.0, ge=6, le=1800, description="A sink silent this long (hung, or killed "
                                     "and not restarted) loses its partitions to the other sinks")


class AlertSettings(BaseModel):
    """The stream workers' alert rules (docs/alerts.md)."""

    enabled: bool = Field(True, description="Evaluate alert rules in the stream workers")
    rules_file: Path | None = Field(None, description="Rules file (TOML); default: the built-in pack")


class AlertmanagerSettings(BaseModel):
    """The local Prometheus Alertmanager (`services up` builds and starts it) and how dcpulse
    notifies it (docs/alerts.md)."""

    enabled: bool = Field(True, description="Provision Alertmanager and post alerts to it")
    version: str = Field("0.31.1", description="Go module version built with `go install`")
    host: str = "127.0.0.1"
    port: int = Field(9095, ge=1, le=65535, description="Not its usual 9093: that is Kafka's controller port here")
    resend_s: float = Field(60.0, gt=0, description="Re-post firing alerts this often (Prometheus: 1 min)")
    group_wait_s: float = Field(30.0, ge=0)
    group_interval_s: float = Field(300.0, gt=0)
    repeat_interval_s: float = Field(14_400.0, gt=0)
    # A secret: on-call tools put their credential in the webhook's URL.
    webhook_url: SecretStr | None = Field(None, description="The receiver's webhook (e.g. an on-call tool); "
                                                      "none: notifications stay in Alertmanager")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ConsoleSettings(BaseModel):
    """`dcpulse console`, the operators' web application (docs/console.md)."""

    host: str = Field("127.0.0.1", pattern=r"^(127\.\d+\.\d+\.\d+|localhost)$",
                      description="Loopback only: the console has no login")
    port: int = Field(8088, ge=1, le=65535)
    refresh_s: float = Field(2.0, gt=0, description="How often each open page is sent fresh data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DCPULSE_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    topics: TopicSettings = TopicSettings()
    services: ServicesSettings = ServicesSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    validation: ValidationSettings = ValidationSettings()
    sink: SinkSettings = SinkSettings()
    alerts: AlertSettings = AlertSettings()
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    console: ConsoleSettings = ConsoleSettings()
    log_format: str = Field("auto", description="auto (console on a TTY, else json) | json | console")
    log_level: str = "info"

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in {"auto", "json", "console"}:
            raise ValueError("log_format must be auto, json or console")
        return value

    @property
    def kafka_secrets_dir(self) -> Path:
        return self.kafka.secrets_dir or self.services.state_dir / "kafka" / "secrets"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get(CONFIG_ENV_VAR)
        if toml_path:
            path = Path(toml_path)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_ENV_VAR}={toml_path}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret shown as '**********'."""
    return settings.model_dump(mode="json")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
