"""Start server processes detached, remember them by PID file, stop them without orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


# What a server may see of ours: where programs and Java are, home, locale, time zone. Nothing
# else: our environment can hold tokens (DCPULSE_INFLUX__*_TOKEN) no server needs.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "JAVA_HOME")


def server_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in INHERITED if name in os.environ}


@dataclass(frozen=True)
class ManagedProcess:
    """A server process we own: its PID file and a string that must be in its command line.

    The marker guards against a stale PID file whose number the kernel has since given to an
    unrelated process: we never signal a process that is not ours.
    """

    name: str
    pid_file: Path
    marker: str

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if cmdline_contains(pid, self.marker) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_file: Path,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Launch argv in its own session (so a Ctrl-C in our terminal does not reach it), with
        `server_environment()` and `env` only."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**server_environment(), **(env or {})},
                start_new_session=True,
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        # Between fork and exec /proc/<pid>/cmdline is not yet ours: wait for the exec so
        # `pid()` and `is_running()` answer truthfully straight after start.
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and not cmdline_contains(proc.pid, self.marker):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return proc.pid

    def exited_early(self) -> bool:
        """True if the PID file names a process that is gone (it crashed while starting)."""
        return self.pid_file.exists() and self.pid() is None

    def stop(self, grace_s: float) -> str:
        """SIGTERM the process group, SIGKILL it after `grace_s`. Returns what happened."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        outcome = "stopped"
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, grace_s):
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
            outcome = f"killed after {grace_s:.0f}s grace"
        self.pid_file.unlink(missing_ok=True)
        return outcome


def cmdline_contains(pid: int, marker: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # A zombie (state Z) has exited; it only waits for its parent to reap it.
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return marker in raw.replace(b"\0", b" ").decode(errors="replace")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or not cmdline_contains(pid, ""):
            return True
        time.sleep(0.2)
    return False
