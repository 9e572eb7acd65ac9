"""Run a scenario: simulate, pace to the chosen clock, publish, report progress and a summary."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dcpulse.producers.simulator import ScenarioSimulator, SiteTruth

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h', '1.5h' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass
class RunStats:
    messages: int = 0
    bytes: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0
    per_site: Counter[str] = field(default_factory=Counter)
    digest: str = ""
    behind_s: float = 0.0  # how far publishing lagged the requested clock at the end

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0


def run_scenario(
    sim: ScenarioSimulator,
    duration_s: float,
    speed: float | None,
    send: Callable[[bytes, bytes, int], None],
    on_progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
) -> RunStats:
    """Publish every message of `duration_s` simulated seconds through `send(key, value, ts_ms)`.

    ts_ms is the tick's simulated time: the Kafka record timestamp, so a recording of the topic
    replays at 1x with the plant's own pacing.

    speed N sleeps so that simulated time advances N times faster than the wall clock; None
    runs flat out. Timestamps inside messages come from the simulated clock either way.
    """
    stats = RunStats()
    digest = hashlib.sha256()
    started = time.monotonic()
    last_report = started
    start_ms = int(sim.scenario.start.timestamp() * 1000)
    for batch in sim.run(duration_s):
        batch_ms = start_ms + int(round(batch.t_s * 1000))
        if speed is not None:
            due = started + batch.t_s / speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stats.behind_s = max(0.0, -delay)
        for key, value in batch.messages:
            send(key, value, batch_ms)
            digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
            stats.bytes += len(value)
        stats.messages += len(batch.messages)
        stats.per_site[batch.site] += len(batch.messages)
        stats.sim_s = batch.t_s
        now = time.monotonic()
        if on_progress and now - last_report >= progress_every_s:
            stats.wall_s = now - started
            on_progress(stats)
            last_report = now
        if stop():
            break
    stats.wall_s = time.monotonic() - started
    stats.digest = digest.hexdigest()
    return stats


def truths(sim: ScenarioSimulator) -> dict[str, SiteTruth]:
    return {s.site.name: s.truth for s in sim.sites}
