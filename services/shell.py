"""Small helpers shared by the server modules: run a logged build step, probe a TCP port."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HEARTBEAT_S = 30.0


def run_logged(
    cmd: list[str],
    *,
    cwd: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    heartbeat: Callable[[str], None] | None = None,
) -> None:
    """Run a build step with its output appended to log_file; on failure raise with the tail.

    Long steps call `heartbeat` every HEARTBEAT_S seconds with the elapsed time and the
    log's last line, so a user watching a 20-minute compile sees it move.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if heartbeat:
                        elapsed = int(time.monotonic() - started)
                        heartbeat(f"  ... {elapsed // 60}m{elapsed % 60:02d}s, {last_line(log_file)}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(
            f"`{' '.join(cmd[:3])} ...` failed with exit code {returncode} "
            f"(full log: {log_file}):\n" + "\n".join(tail)
        )


def last_line(path: Path, max_chars: int = 100) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            lines = [ln for ln in handle.read().decode(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1].strip()[:max_chars] if lines else ""


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
