"""`dcpulse services up|down|status|logs`: the local Kafka, InfluxDB and Alertmanager as one unit."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dcpulse.services.alertmanager import AlertmanagerServer
from dcpulse.services.influxdb import InfluxServer
from dcpulse.services.kafka import KafkaServer
from dcpulse.services.onboarding import Credentials, InfluxOnboarding, load_credentials
from dcpulse.services.process import ManagedProcess
from dcpulse.services.shell import last_line, port_open
from dcpulse.services.topics import provision_pipeline
from dcpulse.settings import Settings
from dcpulse.streams.alertrules import RulesError, inhibitions, load_rules

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
        self.kafka = KafkaServer(settings)
        self.influx = InfluxServer(settings.influx, svc.cache_dir, svc.state_dir)
        self.alertmanager = (AlertmanagerServer(settings.alertmanager, svc.cache_dir, svc.state_dir)
                             if settings.alertmanager.enabled else None)

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
        k, i, a = self.settings.kafka, self.settings.influx, self.settings.alertmanager
        servers = [("kafka", self.kafka, k.host, k.port), ("influxdb", self.influx, i.host, i.port)]
        if self.alertmanager:
            servers.append(("alertmanager", self.alertmanager, a.host, a.port))
        self._check_ports()
        with self._lock():
            if not self.kafka.is_provisioned():
                say("Kafka: not in cache yet, resolving jars (about a minute)")
                self.kafka.provision(say)
            if not self.influx.is_provisioned():
                self.influx.provision(say)
            if self.alertmanager and not self.alertmanager.is_provisioned():
                self.alertmanager.provision(say)
            self.kafka.configure()
            if self.alertmanager:
                try:
                    rules = load_rules(self.settings.alerts.rules_file)
                except RulesError as exc:  # a ValueError: say it the way `services up` reports failures
                    raise RuntimeError(f"alertmanager config: {exc}") from exc
                self.alertmanager.configure(inhibitions(rules))
            for name, server, host, port in servers:
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
            for name, server, _, _ in servers:
                self._wait_healthy(name, server.is_healthy, server.process, server.log_file, say)
            if self.alertmanager and "alertmanager" not in started:
                self.alertmanager.reload()  # it runs the rules of its start: give it the config just written
            InfluxOnboarding(self.settings.influx, self.influx.credentials_file).ensure()
            created = provision_pipeline(self.settings)
            if created:
                say(f"kafka: created topics {', '.join(created)}")
        return started

    def _check_ports(self) -> None:
        """Two of our own servers set to one port would fail only after the first one started,
        as a port "taken by a process dcpulse did not start": name both settings instead."""
        k = self.settings.kafka
        claims = [("kafka.port", k.port), ("kafka.controller_port", k.controller_port),
                  ("influx.port", self.settings.influx.port)]
        if self.alertmanager:
            claims.append(("alertmanager.port", self.settings.alertmanager.port))
        seen: dict[int, str] = {}
        for setting, port in claims:
            if port in seen:
                raise RuntimeError(f"{seen[port]} and {setting} are both {port}: move one "
                                   f"(e.g. DCPULSE_{setting.upper().replace('.', '__')})")
            seen[port] = setting

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
            # Alertmanager and InfluxDB first: nothing depends on them at shutdown; Kafka last.
            processes = [("influxdb", self.influx.process), ("kafka", self.kafka.process)]
            if self.alertmanager:
                processes.insert(0, ("alertmanager", self.alertmanager.process))
            for name, process in processes:
                if only is None or name in only:
                    say(f"{name}: {process.stop(grace)}")

    def status(self) -> list[ServiceStatus]:
        k, i, a = self.settings.kafka, self.settings.influx, self.settings.alertmanager
        rows = [
            ServiceStatus("kafka", k.version, f"{k.host}:{k.port}", self.kafka.process.pid(),
                          self.kafka.process.is_running() and self.kafka.is_healthy(),
                          self.kafka.is_provisioned(), self.kafka.log_file),
            ServiceStatus("influxdb", self.influx.version() if self.influx.is_healthy() else i.version,
                          f"{i.host}:{i.port}", self.influx.process.pid(),
                          self.influx.process.is_running() and self.influx.is_healthy(),
                          self.influx.is_provisioned(), self.influx.log_file),
        ]
        if self.alertmanager:
            rows.append(ServiceStatus("alertmanager", a.version, f"{a.host}:{a.port}", self.alertmanager.process.pid(),
                                      self.alertmanager.process.is_running() and self.alertmanager.is_healthy(),
                                      self.alertmanager.is_provisioned(), self.alertmanager.log_file))
        return rows

    def credentials(self) -> Credentials:
        creds = load_credentials(self.influx.credentials_file)
        if creds is None:
            raise RuntimeError("InfluxDB is not onboarded yet: run `dcpulse services up`")
        return creds

    def log_files(self) -> dict[str, Path]:
        files = {"kafka": self.kafka.log_file, "influxdb": self.influx.log_file}
        if self.alertmanager:
            files["alertmanager"] = self.alertmanager.log_file
        return files
