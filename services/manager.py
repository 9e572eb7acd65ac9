"""`dcpulse services up|down|status|logs`: the local Kafka and InfluxDB as one unit."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dcpulse.services.influxdb import InfluxServer
from dcpulse.services.kafka import KafkaServer
from dcpulse.services.onboarding import Credentials, InfluxOnboarding, load_credentials
from dcpulse.services.process import ManagedProcess
from dcpulse.services.shell import last_line, port_open
from dcpulse.services.topics import ensure_topics, topic_specs
from dcpulse.settings import Settings

Say = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    version: str
    address: str
    pid: int | None
    healthy: bool
    provisioned: bool
    log_file: Path


class LocalServices:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        svc = settings.services
        self.state_dir = svc.state_dir
        self.kafka = KafkaServer(settings.kafka, svc.cache_dir, svc.state_dir)
        self.influx = InfluxServer(settings.influx, svc.cache_dir, svc.state_dir)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (tests and a terminal may race)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def up(self, say: Say) -> list[str]:
        """Provision, start, wait healthy, onboard, create topics. Returns the names started."""
        started: list[str] = []
        with self._lock():
            if not self.kafka.is_provisioned():
                say("Kafka: not in cache yet, resolving jars (about a minute)")
                self.kafka.provision(say)
            if not self.influx.is_provisioned():
                self.influx.provision(say)
            self.kafka.configure()
            for name, server, host, port in (
                ("kafka", self.kafka, self.settings.kafka.host, self.settings.kafka.port),
                ("influxdb", self.influx, self.settings.influx.host, self.settings.influx.port),
            ):
                if server.process.is_running():
                    say(f"{name}: already running (pid {server.process.pid()})")
                    continue
                if port_open(host, port):
                    raise RuntimeError(
                        f"{name}: port {host}:{port} is taken by a process dcpulse did not start; "
                        f"stop it or set another port (see `dcpulse config show`)"
                    )
                pid = server.start()
                started.append(name)
                say(f"{name}: started (pid {pid}), log {server.log_file}")
            self._wait_healthy("kafka", self.kafka.is_healthy, self.kafka.process, self.kafka.log_file, say)
            self._wait_healthy("influxdb", self.influx.is_healthy, self.influx.process, self.influx.log_file, say)
            InfluxOnboarding(self.settings.influx, self.influx.credentials_file).ensure()
            created = ensure_topics(self.settings.kafka.bootstrap, topic_specs(self.settings.topics))
            if created:
                say(f"kafka: created topics {', '.join(created)}")
        return started

    def _wait_healthy(
        self, name: str, probe: Callable[[], bool], process: ManagedProcess, log_file: Path, say: Say
    ) -> None:
        timeout = self.settings.services.start_timeout_s
        started = time.monotonic()
        while not probe():
            if not process.is_running():
                raise RuntimeError(f"{name} exited while starting; last log line: {last_line(log_file, 300)} (log {log_file})")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{name} not healthy after {timeout:.0f}s (log {log_file})")
            time.sleep(0.5)
        say(f"{name}: healthy after {time.monotonic() - started:.1f}s")

    def down(self, say: Say, only: list[str] | None = None) -> None:
        """Stop the servers (all, or those named): SIGTERM, then SIGKILL after the grace period."""
        grace = self.settings.services.stop_grace_s
        with self._lock():
            # InfluxDB first: nothing depends on it at shutdown; Kafka last.
            for name, process in (("influxdb", self.influx.process), ("kafka", self.kafka.process)):
                if only is None or name in only:
                    say(f"{name}: {process.stop(grace)}")

    def status(self) -> list[ServiceStatus]:
        k, i = self.settings.kafka, self.settings.influx
        return [
            ServiceStatus("kafka", k.version, f"{k.host}:{k.port}", self.kafka.process.pid(),
                          self.kafka.process.is_running() and self.kafka.is_healthy(),
                          self.kafka.is_provisioned(), self.kafka.log_file),
            ServiceStatus("influxdb", self.influx.version() if self.influx.is_healthy() else i.version,
                          f"{i.host}:{i.port}", self.influx.process.pid(),
                          self.influx.process.is_running() and self.influx.is_healthy(),
                          self.influx.is_provisioned(), self.influx.log_file),
        ]

    def credentials(self) -> Credentials:
        creds = load_credentials(self.influx.credentials_file)
        if creds is None:
            raise RuntimeError("InfluxDB is not onboarded yet: run `dcpulse services up`")
        return creds

    def log_files(self) -> dict[str, Path]:
        return {"kafka": self.kafka.log_file, "influxdb": self.influx.log_file}
