"""Run the pipeline's long-lived stages as child processes: N Faust workers (`dcpulse streams`,
one consumer group) and the InfluxDB sinks (`dcpulse sink`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka.errors import KafkaError

from dcpulse import kafka_clients
from dcpulse.settings import Settings


def stop_children(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    """SIGTERM every process, wait up to `grace_s` in all, SIGKILL what is left."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Which InfluxDB token files a stage is told of (the others are kept out of its environment): the
# stream workers touch no InfluxDB; the sink writes; anything else gets none.
TOKEN_VARS = ("DCPULSE_INFLUX__WRITE_TOKEN_FILE", "DCPULSE_INFLUX__READ_TOKEN_FILE")
TOKENS_NEEDED = {"streams": (), "sink": ("DCPULSE_INFLUX__WRITE_TOKEN_FILE",)}


def stage_environment(env: dict[str, str], command: str) -> dict[str, str]:
    needed = TOKENS_NEEDED.get(command, ())
    return {k: v for k, v in env.items() if k not in TOKEN_VARS or k in needed}


class PipelineProcesses:
    """The running stages by name: `streams-1` .. `streams-N`, `sink`."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: str) -> None:
        self.logs[name] = self.log_dir / f"{name}.log"
        with open(self.logs[name], "ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "dcpulse.cli", command], stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=stage_environment(self.env, command))

    def kill(self, name: str) -> None:
        """kill -9: no goodbye, no commit."""
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def restart(self, name: str) -> None:
        self.start(name, "streams" if name.startswith("streams") else name)

    def check_alive(self) -> None:
        """Raise with the stage's log tail if a stage has died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"pipeline stage {name!r} exited with code {proc.returncode}:\n{tail}")


@contextmanager
def running_pipeline(settings: Settings, log_dir: Path | None = None, workers: int = 1) -> Iterator[PipelineProcesses]:
    """Start `workers` x `dcpulse streams` and one `dcpulse sink`, wait until every worker has
    its partitions (the group Stable with all members), yield; stop them all on exit.

    Settings reach the children through the environment they inherit, so tests can point them
    at other topics or ports.
    """
    log_dir = log_dir or settings.services.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pipeline = PipelineProcesses(log_dir, {**os.environ, "DCPULSE_LOG_FORMAT": "json"})
    try:
        for i in range(1, workers + 1):
            pipeline.start(f"streams-{i}", "streams")
        pipeline.start("sink", "sink")
        wait_for_group(settings, settings.topics.group("streams"), workers, pipeline.check_alive)
        yield pipeline
    finally:
        stop_children(pipeline.procs.values())


def wait_for_group(settings: Settings, group: str, members: int, check: Callable[[], None],
                   timeout_s: float = 90.0) -> None:
    """Until the consumer group is Stable with `members` members, so that input sent next is not
    met by the start-up rebalances; raises TimeoutError naming the group's state."""
    # kafka-python cannot decode Faust's own assignor metadata and warns with a page of bytes.
    logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)
    admin = kafka_clients.admin(kafka_clients.access(settings, "admin"), "dcpulse-pipeline")
    try:
        deadline = time.monotonic() + timeout_s
        found: dict = {}
        while time.monotonic() < deadline:
            check()
            try:
                found = admin.describe_groups([group]).get(group, {})
            except KafkaError:  # e.g. no group coordinator yet on a fresh broker
                found = {}
            if found.get("group_state") == "Stable" and len(found.get("members") or []) == members:
                return
            time.sleep(0.5)
        raise TimeoutError(f"consumer group {group} not Stable with {members} members after {timeout_s:.0f} s "
                           f"(state {found.get('group_state')}, {len(found.get('members') or [])} members)")
    finally:
        admin.close()
