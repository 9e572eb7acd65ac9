"""Workloads on a site's racks: synchronous training jobs, inference with a daily cycle, idle.

A simple first-fit scheduler places training jobs on runs of free racks in the training pool;
all servers of a job move together (compute/communication phases, checkpoint dips, start and
stop steps). Utilisation is the mean over one sample interval, so a 2 s compute/communication
cycle appears as its duty-weighted mean plus jitter, not as aliasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dcpulse.producers.sitemodel import WorkloadSpec


@dataclass
class Job:
    job_id: int
    racks: list[int]
    start_s: float
    end_s: float
    phase_s: float  # offset of its checkpoint schedule


@dataclass
class RackWorkload:
    """Rack roles are fixed at start (pool sizes from the spec); jobs come and go in the pool."""

    spec: WorkloadSpec
    racks: int
    rng: np.random.Generator
    role: NDArray[np.int64] = field(init=False)  # 0 idle, 1 training pool, 2 inference
    busy: NDArray[np.int64] = field(init=False)  # job id or -1
    jobs: dict[int, Job] = field(default_factory=dict)
    next_job: int = 0

    TRAINING, INFERENCE = 1, 2

    def __post_init__(self) -> None:
        n_train = int(round(self.racks * self.spec.training_share))
        n_inf = int(round(self.racks * self.spec.inference_share))
        self.role = np.zeros(self.racks, dtype=np.int64)
        self.role[:n_train] = self.TRAINING
        self.role[n_train:n_train + n_inf] = self.INFERENCE
        self.busy = np.full(self.racks, -1, dtype=np.int64)

    def step(self, t_s: float) -> None:
        """End finished jobs, then start new ones on free training racks (first fit)."""
        for job in [j for j in self.jobs.values() if j.end_s <= t_s]:
            self.busy[job.racks] = -1
            del self.jobs[job.job_id]
        lo, hi = self.spec.job_racks
        for _ in range(4):  # a few placement attempts per tick keep the pool mostly full
            free = np.flatnonzero((self.role == self.TRAINING) & (self.busy < 0))
            if free.size == 0:
                return
            size = int(self.rng.integers(lo, hi + 1))
            run = _first_run(free, min(size, free.size))
            if run is None:
                return
            duration = float(self.rng.exponential(self.spec.job_mean_hours * 3600.0))
            job = Job(self.next_job, run, t_s, t_s + max(duration, 600.0),
                      float(self.rng.uniform(0, self.spec.checkpoint_every_s)))
            self.busy[run] = job.job_id
            self.jobs[job.job_id] = job
            self.next_job += 1

    def rack_utilisation(self, t_s: float, hour_of_day: float) -> NDArray[np.float64]:
        """Mean accelerator utilisation per rack over this interval."""
        s = self.spec
        util = np.full(self.racks, s.idle_util)
        cycle = 0.5 * (1 - math.cos(2 * math.pi * (hour_of_day - 3.0) / 24.0))  # trough 03:00, peak 15:00
        util[self.role == self.INFERENCE] = s.inference_trough + (s.inference_peak - s.inference_trough) * cycle
        training = s.training_duty + (1 - s.training_duty) * s.comm_util
        for job in self.jobs.values():
            in_checkpoint = (t_s - job.start_s + job.phase_s) % s.checkpoint_every_s < s.checkpoint_s
            util[job.racks] = 0.05 if in_checkpoint else training
        return util


def _first_run(free: NDArray[np.int64], size: int) -> list[int] | None:
    """First run of `size` consecutive free rack indices (a job wants adjacent racks)."""
    if size <= 0:
        return None
    start = 0
    for i in range(1, free.size + 1):
        if i == free.size or free[i] != free[i - 1] + 1:
            if i - start >= size:
                return [int(x) for x in free[start:start + size]]
            start = i
    return None


def server_utilisation(rack_util: NDArray[np.float64], server_rack: NDArray[np.int64], accelerators: int,
                       rng: np.random.Generator, jitter: float = 0.03) -> NDArray[np.float64]:
    """Per-accelerator utilisation: the rack's mean plus small per-device jitter, in [0, 1]."""
    base = rack_util[server_rack][:, None]
    noise = rng.normal(0.0, jitter, size=(server_rack.size, accelerators))
    return np.clip(base + noise, 0.0, 1.0)
