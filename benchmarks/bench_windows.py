"""The analytics stage's throughput against Quix Streams computing the same windows, in one run.

    .venv/bin/pip install -e '.[test,bench]'               # adds quixstreams to the venv
    .venv/bin/python benchmarks/bench_windows.py           # 150,000 hengqin records (or: ./run python ...)
    .venv/bin/python benchmarks/bench_windows.py --records 20000
    .venv/bin/python benchmarks/bench_windows.py --profile --py-spy PATH   # Faust stage only, sampled by py-spy
    .venv/bin/python benchmarks/bench_windows.py --profile cprofile         # Faust stage only, under cProfile

Starts the local servers if needed (`dcpulse services up`), then runs, one after the other:

1. Produce N records of the `hengqin` preset (fixed seed and start, so every run sends the same
   bytes) with TelemetryPublisher into a fresh 6-partition raw topic `<prefix>.telemetry.v1`
   (unique prefix per run; key = site, so all of them land on one partition, by design).
2. dcpulse, pure engine: `streams/offline.py: reference_results` (validation rules + window
   engine, dicts instead of tables) over the same records read back from the topic: no Kafka.
3. dcpulse, the real stage: `python -m dcpulse.cli streams` with DCPULSE_TOPICS__PREFIX=<prefix>,
   i.e. the Faust worker's `analyse` agent: raw -> valid | dead letter, and the windows -> PUE and
   utilisation topics, in one pass per batch, state in the changelog-backed table `dcpulse-state`.
4. Quix Streams: an Application (own consumer group, auto_offset_reset earliest) on the same raw
   topic: JSON parse, event time = the record's `ts`, per site (the Kafka key) a 1-minute tumbling
   window with 30 s grace that collects, per record, the meter register sample (facility meter,
   UPS output, PDU and server energy) and the accelerator utilisations; on close, per rack
   mean/p95/max utilisation and, with the register samples around the window's boundaries kept in
   state, PUE categories 1-3 from interpolated meter deltas (dcpulse.streams.energy). It needs
   the first sample after a window's end, so it emits a window's PUE when the next one closes.
   Its results are compared with dcpulse's at the end (same windows, same values expected).
   The dcpulse stage does more per record: validation (contract, plausibility, duplicates, clock
   skew, dead letters), forwards every valid record to the valid topic, and computes roll-ups,
   pPUE, efficiency and hall/site utilisation on close; the pure-engine figure is that logic without Kafka.
5. faust-streaming alone: a Faust worker with the stage's agent shape (take_events, same batch
   and client settings) that does nothing with the records, measured the same way: the
   framework's own ceiling on this machine, for reading the ratio.

How throughput is measured (every Kafka worker the same way): a monitor polls the committed
offsets of the worker's consumer group every 0.2 s, from just before the process is spawned.
Done = every record is committed (dcpulse: the raw topic, in group `<prefix>-streams`, and every
outcome is on the valid or dead-letter topic; Quix: the raw topic). Committed offsets
are what the worker itself declares processed, in the same terms for both. Watching the result
topics stop growing would not do: results only come when a window closes, 30 s of event time
after its end, so the last 30-90 s of event time (10% of the default run) produce nothing
observable, and "stopped growing" needs a quiet period that is itself a guess. Both workers
commit on a timer: Faust every 2.8 s (or 10,000 records), Quix set to the same 2.8 s (its default
is 5 s), so the end is seen up to ~2.8 s late on both sides.

Printed per stage: records/s from process start to all committed (start-up included, nothing
subtracted); start-up = time to the first committed offset; steady records/s = records committed
after that first commit over the time from it to the end; the worker's CPU time (/proc, all
threads) and the broker's meanwhile (a shared broker: other clients count too). A second line
gives the processing span from the stage's own timestamps (dcpulse: the Kafka timestamps of its
first valid output and of its last state changelog write, one per batch; Quix: its
on_message_processed callback), free of the commit cadence. The ratio is of steady records/s.

--profile runs produce, pure engine and the Faust stage only, with the worker sampled by py-spy
(`pip install py-spy` anywhere, then --py-spy PATH unless it is on PATH; 100 Hz, from outside
the process) or under cProfile (in-process, deterministic, several times slower), and prints own
time by package, the top functions and the stage's entry points inclusive.

Figures are single runs on a shared, noisy 2-core machine; nothing is asserted on them. Every
topic and consumer group of the run carries the run id and is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The monitor's and the Quix worker's own imports stay light; dcpulse modules load in main().

START = datetime(2026, 7, 1, tzinfo=UTC)  # the scenario model's default start: fixed, reproducible
SEED = 7
COMMIT_INTERVAL_S = 2.8  # faust's default broker_commit_interval; Quix is set to the same
POLL_S = 0.2
PY_SPY_HZ = 100
REPO = str(Path(__file__).resolve().parents[1]) + "/"


# ---- Quix Streams worker (runs in its own process: `bench_windows.py --quix-worker ...`) --------

def quix_worker(bootstrap: str, source: str, group: str, out_topic: str, state_dir: str) -> None:
    from quixstreams import Application

    from dcpulse.settings import AnalyticsSettings
    from dcpulse.streams.energy import percentile, pue, sum_meters, window_energy
    from dcpulse.streams.windows import IT_METERS

    analytics = AnalyticsSettings()  # the same windows as the dcpulse stage
    window_s, grace_s = analytics.window_s, analytics.allowed_lateness_s

    meters = {"facility_meter": "energy_kwh", **dict(IT_METERS.values())}
    progress = {"first": None, "last": None, "count": 0, "outputs": 0}

    def processed(_topic: str, _partition: int, _offset: int) -> None:
        now = time.time()
        if progress["first"] is None:
            progress["first"] = now
        progress["last"] = now
        progress["count"] += 1

    def event_time(value: Any, _headers: Any, _timestamp: int, _type: Any) -> int:
        t = datetime.fromisoformat(value["ts"]).timestamp()  # the record's own event time
        value["_t"] = t  # seconds, as dcpulse's engine uses them
        return int(round(t * 1000))

    def slim(value: dict) -> list:
        """What the window keeps of one record: its meter register sample, its accelerators' utilisation."""
        kind, m = value["kind"], value["metrics"]
        register = meters.get(kind)
        util = [v for k, v in m.items() if k.startswith("acc") and k.endswith("_util")] if kind == "server" else None
        return [kind, value["device"], value["rack"], value["_t"], m.get(register) if register else None, util]

    def pue_points(site: str, start: float, tail: dict, pending: dict, following: dict) -> list[dict]:
        """PUE of the window [start, start + window_s): each meter's samples in it, plus the last one
        before it and the first one after it, interpolated at both boundaries."""
        energies: dict[str, list] = defaultdict(list)
        for key in sorted(set(tail) | set(pending) | set(following)):
            samples = ([tail[key]] if key in tail else []) + pending.get(key, []) + following.get(key, [])[:1]
            energies[key.split("/", 1)[0]].append(window_energy([tuple(s) for s in samples], start, start + window_s))
        facility = sum_meters(energies["facility_meter"], len(energies["facility_meter"]))
        points = []
        for category, (kind, _register) in IT_METERS.items():
            it = sum_meters(energies[kind], len(energies[kind]))
            if it.expected == 0:
                continue
            value, coverage = pue(facility, it)
            points.append({"measurement": "pue", "site": site, "category": category, "start": start,
                           "pue": value, "facility_kwh": facility.kwh, "it_kwh": it.kwh, "coverage": coverage})
        return points

    def close_window(window: dict, key: bytes, _timestamp: int, _headers: Any, state: Any) -> list[dict]:
        site = key.decode()
        start = window["start"] / 1000
        registers: dict[str, list] = {}
        racks: dict[str, list] = defaultdict(list)
        for kind, device, rack, ts, register, util in window["value"]:  # in event-time order
            if register is not None:
                registers.setdefault(f"{kind}/{device}", []).append([ts, register])
            if util:
                racks[rack].extend(util)
        points = [{"measurement": "utilisation", "site": site, "rack": rack, "start": start,
                   "acc_util_mean": math.fsum(u) / len(u), "acc_util_p95": percentile(u, 95),
                   "acc_util_max": max(u), "acc_samples": len(u)} for rack, u in sorted(racks.items())]
        pending = state.get("pending")  # the previous window, waiting for its first sample after the end
        tail = state.get("tail", {})  # each meter's last sample before the pending window
        if pending is not None:
            if pending["start"] == start - window_s:
                points.extend(pue_points(site, pending["start"], tail, pending["registers"], registers))
            tail = {**tail, **{k: v[-1] for k, v in pending["registers"].items()}}
        state.set("tail", tail)
        state.set("pending", {"start": start, "registers": registers})
        progress["outputs"] += len(points)
        return points

    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      commit_interval=COMMIT_INTERVAL_S, state_dir=state_dir, loglevel="WARNING",
                      on_message_processed=processed)
    raw = app.topic(source, value_deserializer="json", timestamp_extractor=event_time)
    results = app.topic(out_topic, value_serializer="json")
    sdf = app.dataframe(raw)
    sdf = sdf.apply(slim)
    sdf = sdf.tumbling_window(duration_ms=window_s * 1000, grace_ms=int(grace_s * 1000)).collect().final()
    sdf = sdf.apply(close_window, stateful=True, expand=True, metadata=True)
    sdf.to_topic(results)
    app.run()  # until SIGTERM from the monitor
    print(json.dumps(progress), flush=True)


def faust_noop_worker(source: str, group: str) -> None:
    """faust-streaming's own ceiling: the stage's agent shape (take_events, same batch settings,
    same consumer and producer settings) doing nothing with the records."""
    import faust

    from dcpulse.settings import Settings
    from dcpulse.streams.app import faust_app, run_faust_worker

    settings = Settings()
    batch = settings.analytics
    app = faust_app(group, settings)
    raw = app.topic(source, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(raw, concurrency=1)
    async def noop(stream: faust.StreamT) -> None:
        async for _events in stream.take_events(batch.batch_max_records, within=batch.batch_max_s):
            pass

    run_faust_worker(app)


# ---- the monitor ---------------------------------------------------------------------------------

@dataclass
class StageRun:
    records: int
    total_s: float  # process spawn -> every record committed
    startup_s: float  # process spawn -> first committed offset
    first_committed: int  # records covered by that first commit
    cpu_s: float | None  # the worker process's CPU time (all threads) until done
    broker_cpu_s: float | None  # the Kafka broker's CPU time meanwhile (shared broker: others count too)
    span: tuple[float, float] | None = None  # processing first / last record, seconds after spawn
    spawned_wall: float | None = None  # wall-clock time the worker was spawned

    @property
    def rate(self) -> float:
        return self.records / self.total_s

    @property
    def steady(self) -> float:
        """nan when the first commit already covered every record (a run too short to tell)."""
        span = self.total_s - self.startup_s
        return (self.records - self.first_committed) / span if span > 0 else math.nan

    @property
    def span_rate(self) -> float | None:
        return self.records / (self.span[1] - self.span[0]) if self.span else None


def describe(run: StageRun) -> str:
    line = (f"{run.records:,} records in {run.total_s:.1f} s from process start = {run.rate:,.0f} records/s; "
            f"start-up {run.startup_s:.1f} s (first committed offset, {run.first_committed:,} records in), "
            f"steady {run.steady:,.0f} records/s")
    if run.cpu_s is not None:
        line += f"; worker CPU {run.cpu_s:.1f} s ({run.records / run.cpu_s:,.0f} records per CPU s)"
    if run.broker_cpu_s is not None:
        line += f", broker CPU meanwhile {run.broker_cpu_s:.1f} s"
    if run.span:
        line += (f"\n    processing span from its own timestamps: first record at {run.span[0]:.1f} s, last at "
                 f"{run.span[1]:.1f} s = {run.span_rate:,.0f} records/s")
    return line


class Kafka:
    """The monitor's kafka-python clients."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-windows")

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        found = self.admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.LATEST
                                                   for p in range(partitions)})
        return {tp.partition: o.offset for tp, o in found.items()}

    def partitions(self, topic: str) -> int:
        return len(self.admin.describe_topics([topic])[0]["partitions"])

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        try:
            found = self.admin.list_group_offsets({group: None}).get(group, {})
        except Exception:  # the group does not exist yet
            return {}
        return {(tp.topic, tp.partition): o.offset for tp, o in found.items() if o.offset >= 0}

    def read(self, topic: str, partitions: int) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """Every record of `topic`: (partition, Kafka timestamp ms, key, value), each partition in order."""
        from kafka import KafkaConsumer, TopicPartition

        ends = self.end_offsets(topic, partitions)
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        out: dict[int, list] = defaultdict(list)
        if not tps:
            return []
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                 max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + 300
            while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out reading {topic}")
                for tp, messages in consumer.poll(timeout_ms=1000, max_records=50_000).items():
                    out[tp.partition].extend((m.partition, m.timestamp, m.key, m.value) for m in messages
                                             if m.offset < ends[tp.partition])
        finally:
            consumer.close()
        return [r for p in sorted(out) for r in out[p]]

    def last_timestamp(self, topic: str, partitions: int) -> int | None:
        """The newest Kafka timestamp (ms) of any record of `topic`."""
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        try:
            found = self.admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.MAX_TIMESTAMP
                                                       for p in range(partitions)})
        except Exception:
            return None
        stamps = [o.timestamp for o in found.values() if o.offset >= 0 and o.timestamp >= 0]
        return max(stamps) if stamps else None

    def first_timestamp(self, topic: str, partitions: int) -> int | None:
        """The oldest Kafka timestamp (ms) of the first record of any partition of `topic`."""
        from kafka import KafkaConsumer, TopicPartition

        ends = self.end_offsets(topic, partitions)
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not tps:
            return None
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            firsts: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while len(firsts) < len(tps) and time.monotonic() < deadline:
                for tp, messages in consumer.poll(timeout_ms=500, max_records=len(tps)).items():
                    if messages:
                        firsts.setdefault(tp.partition, messages[0].timestamp)
                        consumer.pause(tp)
        finally:
            consumer.close()
        return min(firsts.values()) if firsts else None

    def delete(self, run_id: str, groups: list[str]) -> None:
        topics = [t for t in self.admin.list_topics() if run_id in t]
        if topics:
            self.admin.delete_topics(topics, raise_errors=False)
        for group in groups:
            try:
                self.admin.delete_groups([group])
            except Exception:  # a group that never committed does not exist
                pass

    def close(self) -> None:
        self.admin.close()


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def watch(proc: subprocess.Popen, log: Path, progress: Callable[[], int], done: Callable[[], bool],
          timeout_s: float, broker_pid: int | None) -> StageRun:
    """Poll the worker's committed offsets from spawn until done(); progress() = records committed."""
    spawned = proc.spawned  # type: ignore[attr-defined]
    broker_before = cpu_seconds(broker_pid)
    first: tuple[float, int] | None = None
    while True:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"worker exited with code {proc.returncode}:\n{tail}")
        now = time.monotonic()
        count = progress()
        if first is None and count > 0:
            first = (now - spawned, count)
        if done():
            broker_after = cpu_seconds(broker_pid)
            broker = broker_after - broker_before if broker_before is not None and broker_after is not None else None
            first = first or (now - spawned, count)
            return StageRun(count, now - spawned, first[0], first[1], cpu_seconds(proc.pid), broker)
        if now - spawned > timeout_s:
            raise RuntimeError(f"not done after {timeout_s:.0f} s; see {log}")
        time.sleep(POLL_S)


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        spawned = time.monotonic()
        wall = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    proc.spawned = spawned  # type: ignore[attr-defined]
    proc.spawned_wall = wall  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM (both workers shut down cleanly on it), SIGKILL after the grace period; our child only."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def produce(bootstrap: str, topic: str, n: int) -> tuple[float, float, float]:
    """N hengqin records into `topic`; returns (wall s, simulated s, mean bytes)."""
    from dcpulse.producers.publisher import TelemetryPublisher
    from dcpulse.producers.run import run_scenario
    from dcpulse.producers.scenario_args import build_scenario
    from dcpulse.producers.simulator import ScenarioSimulator

    sim = ScenarioSimulator(build_scenario(["hengqin"], None, [], SEED, START))
    publisher = TelemetryPublisher(bootstrap, topic)
    sent = 0
    size = 0

    def send(key: bytes, value: bytes, timestamp_ms: int) -> None:
        nonlocal sent, size
        if sent < n:
            publisher.publish_raw(key, value, timestamp_ms)
            sent += 1
            size += len(value)

    started = time.monotonic()
    stats = run_scenario(sim, 30 * 86400.0, None, send, stop=lambda: sent >= n)
    publisher.close()
    if publisher.failures or publisher.sent != n:
        raise RuntimeError(f"publish failures: {dict(publisher.failures)}, sent {publisher.sent}/{n}")
    return time.monotonic() - started, stats.sim_s, size / n


def run_faust(kafka: Kafka, prefix: str, topics: Any, n: int, workdir: Path, timeout_s: float,
              broker_pid: int | None, profile: str | None = None, profile_out: Path | None = None,
              py_spy: str = "py-spy") -> tuple[StageRun, int, int]:
    parts = topics.telemetry_partitions
    group = f"{prefix}-streams"  # dcpulse.streams.app.app_id
    env = {**os.environ, "DCPULSE_TOPICS__PREFIX": prefix, "DCPULSE_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "dcpulse.cli", "streams"]
    if profile == "cprofile":
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_out), "-m", "dcpulse.cli", "streams"]
    log = workdir / "streams.log"
    state: dict[str, Any] = {"committed": {}, "valid": None, "dead": None}

    def committed(topic: str) -> int:
        return sum(o for (t, _), o in state["committed"].items() if t == topic)

    def progress() -> int:
        state["committed"] = kafka.committed(group)
        return committed(topics.telemetry)

    def done() -> bool:
        """The stage committed every raw record and every outcome is on its topic."""
        if committed(topics.telemetry) < n:
            return False
        state["valid"] = sum(kafka.end_offsets(topics.telemetry_valid, parts).values())
        state["dead"] = sum(kafka.end_offsets(topics.deadletter, topics.derived_partitions).values())
        return state["valid"] + state["dead"] == n

    proc = spawn(cmd, env, log)
    sampler = None
    if profile == "py-spy":  # samples the running worker from outside; writes when the worker exits
        sampler = subprocess.Popen([py_spy, "record", "--pid", str(proc.pid), "--rate", str(PY_SPY_HZ),
                                    "--format", "raw", "--output", str(profile_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = watch(proc, log, progress, done, timeout_s, broker_pid)
    finally:
        stop(proc)
        if sampler is not None:
            try:
                sampler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sampler.terminate()
                sampler.wait()
    # The stage's own timestamps: its first valid output, its last state changelog write.
    wall0 = proc.spawned_wall  # type: ignore[attr-defined]
    first_ms = kafka.first_timestamp(topics.telemetry_valid, parts)
    last_ms = kafka.last_timestamp(f"{group}-dcpulse-state-changelog", parts)
    if first_ms and last_ms:
        run.span = (first_ms / 1000 - wall0, last_ms / 1000 - wall0)
    return run, state["valid"], state["dead"]


def run_faust_noop(kafka: Kafka, prefix: str, topics: Any, n: int, workdir: Path, timeout_s: float,
                   broker_pid: int | None) -> StageRun:
    group = f"{prefix}-faust-noop"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--faust-noop-worker", topics.telemetry,
           group]
    return run_committing(kafka, group, topics.telemetry, n, cmd, workdir / "faust-noop.log", timeout_s,
                          broker_pid)


def run_committing(kafka: Kafka, group: str, topic: str, n: int, cmd: list[str], log: Path, timeout_s: float,
                   broker_pid: int | None) -> StageRun:
    """Spawn a worker and watch until its group has committed n records of `topic`."""
    state = {"raw": 0}

    def progress() -> int:
        state["raw"] = sum(o for (t, _), o in kafka.committed(group).items() if t == topic)
        return state["raw"]

    proc = spawn(cmd, dict(os.environ), log)
    try:
        run = watch(proc, log, progress, lambda: state["raw"] >= n, timeout_s, broker_pid)
    finally:
        stop(proc)
    run.spawned_wall = proc.spawned_wall  # type: ignore[attr-defined]  # set by spawn()
    return run


def run_quix(kafka: Kafka, prefix: str, topics: Any, n: int, workdir: Path, timeout_s: float,
             broker_pid: int | None) -> tuple[StageRun, dict]:
    group = f"{prefix}-quix"
    out_topic = f"{prefix}.quix-results.v1"
    log = workdir / "quix.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--quix-worker", kafka.bootstrap, topics.telemetry,
           group, out_topic, str(workdir / "quix-state")]

    run = run_committing(kafka, group, topics.telemetry, n, cmd, log, timeout_s, broker_pid)
    counts = {}
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            counts = json.loads(line)
            break
    if counts.get("first"):
        wall0 = run.spawned_wall or 0.0
        run.span = (counts["first"] - wall0, counts["last"] - wall0)
    return run, {**counts, "topic": out_topic}


def compare(kafka: Kafka, topics: Any, quix_topic: str, quix_outputs: int, reference: dict) -> list[str]:
    """The two stages' results side by side: PUE per (window, category) and rack utilisation."""
    from dcpulse.contract import AnalyticsPoint

    parts = topics.telemetry_partitions
    ours = [AnalyticsPoint.model_validate_json(v) for topic in (topics.pue, topics.utilisation)
            for _, _, _, v in kafka.read(topic, parts)]
    theirs: list[dict] = []
    for _ in range(10):  # Quix reported its outputs; give the topic's metadata a moment if it reads empty
        theirs = [json.loads(v) for _, _, _, v in kafka.read(quix_topic, kafka.partitions(quix_topic))]
        if theirs or not quix_outputs:
            break
        time.sleep(1.0)
    if quix_outputs and not theirs:
        return [f"results: Quix reported {quix_outputs:,} results but none could be read back from {quix_topic} "
                f"(end offsets {kafka.end_offsets(quix_topic, kafka.partitions(quix_topic))}): not compared"]
    ours_keys = {p.key: p for p in ours}
    same = set(ours_keys) == set(reference) and all(ours_keys[k].fields == reference[k].fields for k in reference)
    d_pue = {(p.time.timestamp(), p.tags["category"]): p.fields.get("pue") for p in ours
             if p.measurement == "pue" and p.tags.get("window") == "1m"}
    d_util = {(p.time.timestamp(), p.tags["entity"]): p.fields for p in ours
              if p.measurement == "utilisation" and p.tags["level"] == "rack"}
    q_pue = {(r["start"], r["category"]): r["pue"] for r in theirs if r["measurement"] == "pue"}
    q_util = {(r["start"], r["rack"]): r for r in theirs if r["measurement"] == "utilisation"}

    def diff(a: float | None, b: float | None) -> float:
        return 0.0 if a is None and b is None else math.inf if a is None or b is None else abs(a - b)

    common_pue = sorted(set(d_pue) & set(q_pue))
    pue_diff = max((diff(d_pue[k], q_pue[k]) for k in common_pue), default=math.nan)
    with_value = sum(1 for k in common_pue if d_pue[k] is not None)
    common_util = sorted(set(d_util) & set(q_util))
    util_diff = max((abs(d_util[k][f] - q_util[k][f]) for k in common_util
                     for f in ("acc_util_mean", "acc_util_p95", "acc_util_max", "acc_samples")), default=math.nan)
    windows = lambda keys: len({k[0] for k in keys})  # noqa: E731
    return [
        f"results: dcpulse Faust {len(ours):,} points over {windows(d_util)} closed windows "
        f"(identical to the offline reference: {'yes' if same else 'NO'}); Quix {len(theirs):,} points "
        f"({windows(q_util)} windows of rack utilisation, {windows(q_pue)} of PUE: a window's PUE waits for the next)",
        f"results compared: PUE on {len(common_pue)} common (window, category), {with_value} with a value, "
        f"max |difference| {pue_diff:.3g}; rack utilisation mean/p95/max/samples on {len(common_util):,} common "
        f"(window, rack), max |difference| {util_diff:.3g}",
    ]


def package_of(file: str) -> str:
    """Where a frame's code lives: a library, a stdlib module, or dcpulse itself."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if file.startswith(REPO):
        return "dcpulse"
    stdlib = re.search(r"/python3\.\d+/(.+)$", file)
    return "stdlib " + stdlib.group(1).split("/", 1)[0].removesuffix(".py") if stdlib else file


KEY_FRAMES = ("analyse", "handle_batch", "handle", "dirty_buckets", "process_record", "process", "from_bytes",
              "to_bytes", "send", "send_soon", "send_changelog", "publish_message", "_send_pending", "flush", "commit", "_fetcher",
              "_drain_messages", "_sender_routine", "_send_produce_req", "add_message", "zstd_encode", "debug",
              "_log", "on_message", "_c_aiter", "__setitem__", "_execute_actor")


def print_cprofile(path: Path, top: int = 20) -> None:
    stats = pstats.Stats(str(path))
    total = stats.total_tt
    by_package: Counter[str] = Counter()
    for (file, _line, name), (_cc, _calls, tottime, _cum, _) in stats.stats.items():
        by_package[package_of(file) if file != "~" else f"builtin {name}"] += tottime
    print(f"\nFaust worker under cProfile: {total:.1f} s (wall clock, the profiler's own overhead included); "
          f"own time by package:")
    for package, seconds in by_package.most_common(12):
        print(f"  {seconds:7.2f} s {100 * seconds / total:5.1f}%  {package}")
    print(f"top {top} functions by own time:")
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, name), (_cc, calls, tottime, cumtime, _) in rows:
        print(f"  {tottime:7.2f} s {100 * tottime / total:5.1f}%  {calls:>10,} calls  {_short(file)}:{line}({name})")
    print("the stage's entry points and Kafka paths by cumulative time:")
    picked = [(k, v) for k, v in stats.stats.items() if k[2] in KEY_FRAMES and k[0] != "~"]
    for (file, line, name), (_cc, calls, _tt, cumtime, _) in sorted(picked, key=lambda kv: -kv[1][3])[:top]:
        print(f"  {cumtime:7.2f} s {100 * cumtime / total:5.1f}%  {calls:>10,} calls  {_short(file)}:{line}({name})")


def print_py_spy(path: Path, rate: float, top: int = 20) -> None:
    """Summarise py-spy's raw output: one line per distinct stack, `frame;frame;... count`, each
    frame `qualified.name (path/file.py:line)` with the path shortened by py-spy."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            frames.append((name, where.rstrip(")").rsplit(":", 1)[0]))
        name, file = frames[-1]
        own[f"{name} ({file})"] += count
        first = file.split("/", 1)[0].removesuffix(".py")
        by_package["dcpulse" if first in ("streams", "producers", "sinks", "services", "dcpulse") else first] += count
        for name, file in {f for f in frames if f[0].rsplit(".", 1)[-1] in KEY_FRAMES}:
            inclusive[f"{name} ({file})"] += count
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\nFaust worker sampled by py-spy at {rate:.0f} Hz: {total:,} samples on CPU = {total / rate:.1f} s "
          f"(idle waits excluded); own time by package:")
    for package, count in by_package.most_common(12):
        print(f"  {count / rate:7.2f} s {100 * count / total:5.1f}%  {package}")
    print(f"top {top} functions by own time:")
    for frame, count in own.most_common(top):
        print(f"  {count / rate:7.2f} s {100 * count / total:5.1f}%  {frame}")
    print("the stage's entry points and Kafka paths, inclusive (a frame counts for every sample it is on the stack of):")
    for frame, count in inclusive.most_common(top):
        print(f"  {count / rate:7.2f} s {100 * count / total:5.1f}%  {frame}")


def _short(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    if file.startswith(REPO):
        return file[len(REPO):]
    stdlib = re.search(r"/python3\.\d+/(.+)$", file)
    return stdlib.group(1) if stdlib else file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=150_000, help="hengqin records to produce (default 150,000)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a stage after this many seconds")
    parser.add_argument("--profile", nargs="?", const="py-spy", choices=("py-spy", "cprofile"),
                        help="run only the Faust stage, sampled by py-spy (default; `pip install py-spy`) or "
                             "under cProfile, and print where its time goes")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy executable")
    args = parser.parse_args()

    from importlib.metadata import version

    from dcpulse.services.manager import LocalServices
    from dcpulse.services.topics import ensure_topics, topic_specs
    from dcpulse.settings import Settings, TopicSettings
    from dcpulse.streams.offline import reference_results

    settings = Settings()
    services = LocalServices(settings)
    services.up(lambda _m: None)
    broker_pid = services.kafka.process.pid()  # only read: its CPU time from /proc
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-windows-{run_id}"
    # Kafka's time-based retention goes by the records' timestamps, which are the fixed simulated
    # time (START): the telemetry topics must keep records that old.
    age_h = math.ceil((datetime.now(UTC) - START).total_seconds() / 3600)
    topics = TopicSettings(prefix=prefix, telemetry_retention_hours=max(24, age_h + 24 * 30))
    n = args.records
    kafka = Kafka(settings.kafka.bootstrap)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-windows-{run_id}-"))
    try:
        ensure_topics(settings.kafka.bootstrap, topic_specs(topics))
        wall, sim_s, size = produce(settings.kafka.bootstrap, topics.telemetry, n)
        ends = kafka.end_offsets(topics.telemetry, topics.telemetry_partitions)
        print(f"produced {n:,} hengqin records ({sim_s:.0f} simulated s, mean {size:.0f} B) in {wall:.1f} s into "
              f"{topics.telemetry} (records per partition: {[ends[p] for p in sorted(ends)]})", flush=True)

        records = kafka.read(topics.telemetry, topics.telemetry_partitions)
        if len(records) != n:
            raise RuntimeError(f"read back {len(records)} records, expected {n}")
        started = time.perf_counter()
        reference = reference_results(records)
        engine_s = time.perf_counter() - started
        del records
        print(f"dcpulse pure engine (streams/offline.py reference_results: validation rules + window engine, "
              f"no Kafka): {n:,} records in {engine_s:.1f} s = {n / engine_s:,.0f} records/s", flush=True)

        profile_out = None
        if args.profile:
            suffix = "prof" if args.profile == "cprofile" else "py-spy.txt"
            profile_out = Path(tempfile.gettempdir()) / f"bench_windows-{run_id}.{suffix}"
        faust, valid, dead = run_faust(kafka, prefix, topics, n, workdir, args.timeout, broker_pid,
                                       args.profile, profile_out, args.py_spy)
        print(f"dcpulse Faust stage (`dcpulse streams`: the analyse agent, validation + windows"
              f"{f', profiled with {args.profile}' if args.profile else ''}; {valid:,} valid, {dead:,} "
              f"dead-lettered): {describe(faust)}", flush=True)
        if args.profile:
            if args.profile == "cprofile":
                print_cprofile(profile_out)
            else:
                print_py_spy(profile_out, PY_SPY_HZ)
            print(f"(full profile kept in {profile_out})")
            return

        quix, counts = run_quix(kafka, prefix, topics, n, workdir, args.timeout, broker_pid)
        print(f"Quix Streams {version('quixstreams')} (same windows: JSON, event time from ts, 1-minute tumbling "
              f"window collect + final, PUE 1-3 and rack utilisation; {counts.get('count', 0):,} records "
              f"processed, {counts.get('outputs', 0):,} results): {describe(quix)}", flush=True)
        noop = run_faust_noop(kafka, prefix, topics, n, workdir, args.timeout, broker_pid)
        print(f"faust-streaming alone (a no-op agent, same take_events batches and client settings, same "
              f"topic): {describe(noop)}; dcpulse stage / no-op: {faust.steady / noop.steady:.2f}, "
              f"no-op / Quix: {noop.steady / quix.steady:.2f} in steady records/s", flush=True)
        ratio = faust.steady / quix.steady
        spans = (f", {faust.span_rate / quix.span_rate:.2f} over the processing spans"
                 if faust.span_rate and quix.span_rate else "")
        print(f"ratio dcpulse Faust / Quix Streams: {ratio:.2f} in steady records/s (target >= 1.0); "
              f"{faust.rate / quix.rate:.2f} from process start{spans}"
              f"{'; below target: --profile shows where the Faust stage spends its time' if ratio < 1 else ''}",
              flush=True)
        for line in compare(kafka, topics, counts["topic"], counts.get("outputs", 0), reference):
            print(line, flush=True)
    finally:
        kafka.delete(run_id, [f"{prefix}-streams", f"{prefix}-quix", f"{prefix}-faust-noop"])
        kafka.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--quix-worker":
        quix_worker(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--faust-noop-worker":
        faust_noop_worker(*sys.argv[2:])
    else:
        main()
