"""Prometheus Alertmanager: built from its Go module with `go install`, configured from the rules.

dcpulse decides alert state in its own event-time engine; Alertmanager only delivers, groups
and silences (docs/alerts.md), so its configuration is generated: one route, one receiver,
and the inhibit rules the alert rules' topology implies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from dcpulse.private_files import write_private
from dcpulse.services import cache
from dcpulse.services.process import ManagedProcess
from dcpulse.services.shell import run_logged
from dcpulse.settings import AlertmanagerSettings
from dcpulse.streams.alertrules import Inhibition

MODULE = "github.com/prometheus/alertmanager"
VERSION_VAR = "github.com/prometheus/common/version.Version"
BUILD_ESTIMATE = "about 1 minute on 2 cores with a warm Go module cache, measured; cached afterwards"
GLOB = re.compile(r"[a-z0-9_*]+")


def glob_regex(globs: tuple[str, ...]) -> str:
    """Alertname globs as one Alertmanager regex (it anchors regexes itself)."""
    for glob in globs:
        # Only `*` is special in these globs; anything else would need regex and matcher escaping.
        if not GLOB.fullmatch(glob):
            raise ValueError(f"alertname glob {glob!r} may hold only a-z, 0-9, _ and *")
    return "|".join(glob.replace("*", ".*") for glob in globs)


def duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as "30s", anything finer in milliseconds."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def render_config(settings: AlertmanagerSettings, inhibitions: list[Inhibition]) -> str:
    """alertmanager.yml: alerts grouped per site and root cause, so one CDU failure and the
    accelerator alerts it causes notify as one group."""
    receiver: dict[str, object] = {"name": "operators"}
    if settings.webhook_url:
        receiver["webhook_configs"] = [{"url": settings.webhook_url.get_secret_value(), "send_resolved": True}]
    config = {
        "route": {
            "receiver": "operators",
            "group_by": ["site", "cause"],
            "group_wait": duration(settings.group_wait_s),
            "group_interval": duration(settings.group_interval_s),
            "repeat_interval": duration(settings.repeat_interval_s),
        },
        "receivers": [receiver],
        "inhibit_rules": [
            {
                "source_matchers": [f'alertname="{rule.source}"'],
                "target_matchers": [f'alertname=~"{glob_regex(rule.targets)}"'],
                "equal": list(rule.equal),
            }
            for rule in inhibitions
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


class AlertmanagerServer:
    """Provision (build), configure, start and probe the local Alertmanager."""

    def __init__(self, settings: AlertmanagerSettings, cache_dir: Path, state_dir: Path) -> None:
        self.settings = settings
        self.home = cache.artefact_dir(cache_dir, "alertmanager", settings.version)
        self.state = state_dir / "alertmanager"
        self.config_file = self.state / "alertmanager.yml"
        self.data_dir = self.state / "data"
        self.log_file = self.state / "alertmanager.log"
        # Outside the scratch dir, which a failed build removes: the error points at this log.
        self.build_log = self.state / "build.log"
        self.process = ManagedProcess("alertmanager", self.state / "alertmanager.pid", marker=str(self.config_file))

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "alertmanager"

    def is_provisioned(self) -> bool:
        return cache.is_complete(self.home) and self.binary.is_file()

    def provision(self, log: Callable[[str], None]) -> None:
        if self.is_provisioned():
            return
        if shutil.which("go") is None:
            raise RuntimeError("`go` is not on PATH: building Alertmanager needs Go >= 1.24")
        version = self.settings.version
        log(f"building alertmanager {version} with go install ({BUILD_ESTIMATE}); log: {self.build_log}")
        with cache.building(self.home, {"alertmanager": version, "module": MODULE}) as scratch:
            run_logged(
                # The version flag is what `--version` and /api/v2/status report; go install leaves it empty.
                ["go", "install", f"-ldflags=-X {VERSION_VAR}={version}", f"{MODULE}/cmd/alertmanager@v{version}"],
                cwd=scratch, log_file=self.build_log,
                env={"GOBIN": str(scratch / "bin"), "GOTOOLCHAIN": "local"}, heartbeat=log,
            )
            out = subprocess.run([str(scratch / "bin" / "alertmanager"), "--version"],
                                 capture_output=True, text=True, check=True)
            log(f"built: {out.stdout.splitlines()[0]}")

    def configure(self, inhibitions: list[Inhibition]) -> None:
        """Write the config; a running server picks it up on `reload()`."""
        write_private(self.config_file, render_config(self.settings, inhibitions))  # a webhook URL may carry a credential

    def start(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary),
            f"--config.file={self.config_file}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address={self.settings.host}:{self.settings.port}",
            "--cluster.listen-address=",  # empty: no gossip listener on 0.0.0.0:9094
            "--log.level=info",
        ]
        return self.process.start(argv, cwd=self.state, log_file=self.log_file)

    def reload(self) -> None:
        """Make the running server re-read its config file; raise with its answer if it refuses."""
        url = f"{self.settings.url}/-/reload"
        try:
            response = httpx.post(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"alertmanager reload: POST {url} failed: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeError(f"alertmanager reload: POST {url} answered {response.status_code}: "
                               f"{response.text.strip()} (config {self.config_file})")

    def is_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.url}/-/ready", timeout=3.0).status_code == 200
        except httpx.HTTPError:
            return False
