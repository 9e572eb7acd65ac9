"""Run the pipeline's long-lived stages (Faust worker, InfluxDB sink) as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dcpulse.settings import Settings

STAGES = ("streams", "sink")


class PipelineProcesses:
    def __init__(self, procs: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
        self.procs = procs
        self.logs = logs

    def check_alive(self) -> None:
        """Raise with the stage's log tail if a stage has died."""
        for stage, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.logs[stage].read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"pipeline stage {stage!r} exited with code {proc.returncode}:\n{tail}")


@contextmanager
def running_pipeline(settings: Settings, log_dir: Path | None = None) -> Iterator[PipelineProcesses]:
    """Start `dcpulse streams` and `dcpulse sink`; stop both (SIGTERM, then SIGKILL) on exit.

    Settings reach the children through the environment
    they inherit, so tests can point them at other topics or ports.
    """
    log_dir = log_dir or settings.services.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {stage: log_dir / f"{stage}.log" for stage in STAGES}
    env = {**os.environ, "DCPULSE_LOG_FORMAT": "json"}
    try:
        for stage in STAGES:
            with open(logs[stage], "ab") as out:
                procs[stage] = subprocess.Popen(
                    [sys.executable, "-m", "dcpulse.cli", stage],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
        yield PipelineProcesses(procs, logs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


