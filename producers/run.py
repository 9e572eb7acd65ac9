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


Send = Callable[[bytes, bytes, int], None]  # (key, value, Kafka timestamp in ms)


@dataclass
class RunStats:
    messages: int = 0  # agents' batches (and malformed records)
    samples: int = 0  # device samples in those batches
    watermarks: int = 0  # one per site and tick, each broadcast to every partition
    bytes: int = 0  # of the messages
    sim_s: float = 0.0
    wall_s: float = 0.0
    per_site: Counter[str] = field(default_factory=Counter)  # messages
    per_site_samples: Counter[str] = field(default_factory=Counter)
    digest: str = ""
    behind_s: float = 0.0  # how far publishing lagged the requested clock at the end

    @property
    def rate(self) -> float:
        """Messages per wall second."""
        return self.messages / self.wall_s if self.wall_s else 0.0

    @property
    def sample_rate(self) -> float:
        return self.samples / self.wall_s if self.wall_s else 0.0


def run_scenario(
    sim: ScenarioSimulator,
    duration_s: float,
    speed: float | None,
    send: Send,
    broadcast: Send,
    on_progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
) -> RunStats:
    """Publish `duration_s` simulated seconds: each tick's batches through `send(key, value, ts_ms)`
    (to the key's partition), then each site's watermark through `broadcast(key, value, ts_ms)`
    (to every partition), so no partition waits for a site whose agents it does not carry.
    Sites ticking at the same instant send all their batches before their watermarks: a
    recording replayed into the same partitions then reproduces every partition's order
    (replay_order.merge_by_timestamp puts watermarks after the records of their timestamp).

    ts_ms is the tick's simulated time: the Kafka record timestamp, so a recording of the topic
    replays at 1x with the plant's own pacing. The digest covers batches and watermarks in order.

    speed N sleeps so that simulated time advances N times faster than the wall clock; None
    runs flat out. Timestamps inside messages come from the simulated clock either way.
    """
    stats = RunStats()
    digest = hashlib.sha256()
    started = time.monotonic()
    last_report = started
    for ticks in sim.run(duration_s):
        t_s = ticks[0].t_s
        if speed is not None:
            due = started + t_s / speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stats.behind_s = max(0.0, -delay)
        for tick in ticks:
            for key, value in tick.messages:
                send(key, value, tick.t_ms)
                _hash(digest, key, value)
                stats.bytes += len(value)
            stats.messages += len(tick.messages)
            stats.samples += tick.samples
            stats.per_site[tick.site] += len(tick.messages)
            stats.per_site_samples[tick.site] += tick.samples
        for tick in ticks:
            broadcast(*tick.watermark, tick.t_ms)
            _hash(digest, *tick.watermark)
            stats.watermarks += 1
        stats.sim_s = t_s
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


def _hash(digest: hashlib._Hash, key: bytes, value: bytes) -> None:
    digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)


def truths(sim: ScenarioSimulator) -> dict[str, SiteTruth]:
    return {s.site.name: s.truth for s in sim.sites}
