"""The analytics stage against Quix Streams on the same v2 topic and windows, and its scale-out.

    .venv/bin/pip install -e '.[test,bench]'               # adds quixstreams to the venv
    .venv/bin/python benchmarks/bench_windows.py                     # 300,000 hengqin samples: (a)-(d)
    .venv/bin/python benchmarks/bench_windows.py --workers 1 2 3     # scale-out: 1, 2, 3 `dcpulse streams`

Starts the local servers if needed. The simulator (hengqin, seed 7, start 2026-07-01T00:00Z, so
every run sends the same bytes) gives at least N samples in whole ticks: one batch per agent and
tick (key `<site>/<agent>`), each tick's watermark broadcast to every partition, published with
the project's TelemetryPublisher and run_scenario into a fresh 12-partition raw topic. Then,
one after the other, on that topic:

(a) dcpulse pure engine: streams/offline.py `reference_results` over the records read back
    (validation, per-partition stage, site combiner; no Kafka, no checkpoints).
(b) dcpulse worker: one `python -m dcpulse.cli streams` process (both agents: `analyse` validates,
    forwards valid batches, dead-letters, folds windows and emits rack results and site partials;
    `combine` turns partials into PUE 1-3, pPUE, WUE/ITUE/TUE, hall and site utilisation and
    roll-ups), every batch checkpointed (outputs and state confirmed before the commit).
(c) Quix Streams, written as a Quix user would, in one Application: JSON value, watermark records
    dropped (Quix keeps its own event time), `apply(samples, expand=True)`, event time from each
    sample's `ts`, then per agent (the Kafka key) a 1-minute tumbling window with 30 s grace and
    Quix's own aggregations: Reduce (first and last register sample per meter), Collect
    (accelerator utilisations), Mean (CPU utilisation, PDU power), Last (rated power, rack, hall).
    On close: the rack's utilisation (mean, p95, max and count of accelerator utilisation, CPU
    mean, PDU power against rated) and, from state, the previous window's energy per meter
    (register interpolated at both edges between the neighbouring windows' samples) summed per
    agent; those partials are re-keyed by site (`group_by`, a repartition topic) into a second
    tumbling window (Collect, grace --quix-site-grace) that gives PUE 1-3, pPUE per hall and WUE.
    Quix does NOT do: validation and dead letters (contract, plausibility, duplicates, clock
    skew), forwarding to the valid topic, ITUE/TUE, CDU heat, hall and site utilisation,
    15-minute and 1-hour roll-ups, power-gauge fallbacks, register resets inside a window, and
    closing by watermarks: its windows close on the largest timestamp seen per key, so results
    depend on arrival order (late partials are dropped and counted).
(d) faust-streaming alone: an agent with the stage's shape (take_events, same batch and client
    settings) that does nothing with the records: the framework's ceiling here.

--workers 1 2 3 instead runs (a), then dcpulse with 1, 2 and 3 worker processes in one consumer
group, each count on its own copy of the topic (the same records, published once per copy from
one simulation, since the group and the output topics follow the topic prefix); it prints
samples per CPU-second of the workers (the sum of their CPU time from /proc), the ratio of 2 and
3 workers to 1 (target within 15 %), and whether every run's result topics (keyed by point key)
are identical to each other and to the offline reference.

How throughput is measured (every worker the same way): a monitor polls the group's committed
offsets every 0.2 s from just before the processes are spawned; committed offsets are mapped to
samples through the records read back. Done = every raw record committed (dcpulse confirms every
output and its state before committing, Quix after its checkpoint). Steady = from the first poll
at which the group is Stable with all its members and has committed something, to done: start-up
and the first rebalances are left out. Both commit every 2.8 s (Faust's default; Quix is set to
it), so the end is seen up to ~2.8 s late on both sides. Printed per stage: samples/s steady and
from process start, the workers' CPU seconds (/proc, all threads) and samples per CPU-second,
the broker's CPU meanwhile (a shared broker: other clients count too).

Everything carries the run id (`bench-windows-<id>`: topics, groups, Quix's internal topics, a
temporary state directory), on 127.0.0.1, and is deleted at the end, also on error. Every
stage is bounded by --timeout. Figures are single runs on a shared machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from dcpulse.kafka_clients import KafkaAccess

# The workers' own imports stay light; dcpulse modules load where they are used.

START = datetime(2026, 7, 1, tzinfo=UTC)  # the scenario model's default start: fixed, reproducible
SEED = 7
COMMIT_INTERVAL_S = 2.8  # faust's default broker_commit_interval; Quix is set to the same
POLL_S = 0.2
Record = tuple[int, int | None, bytes | None, bytes | None]  # (partition, Kafka timestamp ms, key, value)


# ---- Quix Streams worker (its own process: `bench_windows.py --quix-worker ...`) -----------------

def quix_worker(source: str, group: str, out_topic: str, state_dir: str, site_grace_s: str) -> None:
    from quixstreams import Application
    from quixstreams.dataframe.windows import Collect, Last, Mean, Reduce
    from quixstreams.kafka.configuration import ConnectionConfig

    from dcpulse.kafka_clients import access
    from dcpulse.settings import Settings

    from dcpulse.settings import AnalyticsSettings
    from dcpulse.streams.energy import percentile, window_energy
    from dcpulse.streams.windows import HALL_ENERGIES, SITE_ENERGIES

    cfg = AnalyticsSettings()  # the same windows as the dcpulse stage
    window_ms, grace_ms = cfg.window_s * 1000, round(cfg.allowed_lateness_s * 1000)
    label = f"{cfg.window_s // 60}m"
    meters: dict[str, list[tuple[str, str]]] = defaultdict(list)  # kind -> (register, energy group)
    for name, (kind, register) in {**HALL_ENERGIES, **SITE_ENERGIES}.items():
        meters[kind].append((register, name))
    progress: Counter[str] = Counter()

    def row(sample: dict) -> dict:
        """What the windows need of one sample."""
        kind, m = sample["kind"], sample["metrics"]
        server = kind == "server"
        return {"t": round(datetime.fromisoformat(sample["ts"]).timestamp() * 1000), "device": sample["device"],
                "hall": sample.get("hall"), "rack": sample.get("rack"),
                "meters": [[name, m[register]] for register, name in meters.get(kind, ()) if register in m],
                "util": [v for k, v in m.items() if k.startswith("acc") and k.endswith("_util")] if server else None,
                "cpu": m.get("cpu_util") if server else None,
                "kw": m.get("power_kw") if kind == "pdu" else None,
                "rated": m.get("rated_kw") if kind == "pdu" else None}

    def add_meters(acc: dict, r: dict) -> dict:
        """Per meter (`device|group`): [hall, first t, first value, last t, last value]."""
        for name, value in r["meters"]:
            m = acc.get(f"{r['device']}|{name}")
            if m is None:
                acc[f"{r['device']}|{name}"] = [r["hall"], r["t"], value, r["t"], value]
            elif r["t"] >= m[3]:
                m[3], m[4] = r["t"], value
            elif r["t"] < m[1]:
                m[1], m[2] = r["t"], value
        return acc

    def late(*_: Any) -> bool:
        progress["late_samples"] += 1
        return False  # counted, not logged

    def late_partial(*_: Any) -> bool:
        progress["late_partials"] += 1
        return False

    def rack_point(site: str, w: dict) -> dict:
        util = [u for us in w["util"] if us for u in us]
        fields: dict[str, float] = {}
        if util:
            fields.update(acc_util_mean=math.fsum(util) / len(util), acc_util_p95=percentile(util, 95),
                          acc_util_max=max(util), acc_samples=float(len(util)))
        if w["cpu"] is not None:
            fields["cpu_util_mean"] = w["cpu"]
        if w["kw"] is not None:
            fields["power_kw"] = w["kw"]
            if w["rated"]:
                fields.update(provisioned_kw=w["rated"], power_ratio=w["kw"] / w["rated"])
        tags = {"site": site, "level": "rack", "entity": w["rack"], "window": label, "hall": w["hall"]}
        return {"kind": "point", "measurement": "utilisation", "tags": tags, "fields": fields, "start": w["start"]}

    def partial(site: str, start: int, tail: dict, current: dict, following: dict) -> dict:
        """Energy per group over [start, start + window) of this agent's meters: each register
        interpolated at both edges between the samples around them."""
        energies: dict[str, list] = defaultdict(list)
        for key in sorted(set(tail) | set(current) | set(following)):
            samples, hall = [], None
            if key in tail:
                hall, t, v = tail[key]
                samples.append((t, v))
            if key in current:
                hall, t0, v0, t1, v1 = current[key]
                samples += [(t0, v0), (t1, v1)]
            if key in following:
                hall, t0, v0, _, _ = following[key]
                samples.append((t0, v0))
            name = key.rsplit("|", 1)[1]
            energies[name if name in SITE_ENERGIES else f"{name}/{hall}"].append(
                window_energy(samples, start, start + window_ms))
        sums = {name: [math.fsum(e for e in es if e is not None), sum(e is not None for e in es), len(es)]
                for name, es in energies.items()}
        return {"kind": "partial", "site": site, "start": start, "energies": sums}

    def agent_closed(w: dict, key: bytes, _ts: int, _headers: Any, state: Any) -> list[dict]:
        """A closed agent window: its rack result now, the previous window's energies (they need
        this window's first samples)."""
        site = key.decode().split("/", 1)[0]
        out = [rack_point(site, w)] if w["rack"] is not None else []
        prev, tail = state.get("prev"), state.get("tail", {})
        if prev is not None:
            if prev["start"] == w["start"] - window_ms:
                out.append(partial(site, prev["start"], tail, prev["meters"], w["meters"]))
            tail = {**tail, **{k: [m[0], m[3], m[4]] for k, m in prev["meters"].items()}}
            state.set("tail", tail)
        state.set("prev", {"start": w["start"], "meters": w["meters"]})
        return out

    def site_closed(w: dict) -> list[dict]:
        site = w["value"][0]["site"]
        names = {name for p in w["value"] for name in p["energies"]}
        total = {name: [math.fsum(p["energies"][name][0] for p in w["value"] if name in p["energies"]),
                        sum(p["energies"][name][1] for p in w["value"] if name in p["energies"])] for name in names}

        def kwh(group: str) -> tuple[float, int]:
            found = [v for name, v in total.items() if name == group or name.startswith(group + "/")]
            return math.fsum(v[0] for v in found), sum(v[1] for v in found)

        def point(measurement: str, tags: dict, fields: dict) -> dict:
            return {"kind": "point", "measurement": measurement, "tags": {"site": site, **tags, "window": label},
                    "fields": fields, "start": w["start"]}

        facility, facility_n = kwh("facility")
        out = []
        for category, group in (("1", "ups_out"), ("2", "pdu"), ("3", "server")):
            it, _ = kwh(group)
            fields = {"facility_kwh": facility, "it_kwh": it}
            if facility_n and it > 0:
                fields["pue"] = facility / it
            out.append(point("pue", {"category": category}, fields))
        for hall in sorted({name.split("/", 1)[1] for name in names if name.startswith("pdu/")}):
            it, _ = kwh(f"pdu/{hall}")
            zone = math.fsum(kwh(f"{g}/{hall}")[0] for g in ("ups_in", "cdu", "crah"))
            if it > 0 and kwh(f"ups_in/{hall}")[1]:
                out.append(point("ppue", {"hall": hall}, {"it_kwh": it, "ppue": zone / it, "infra_kwh": zone - it}))
        water, water_n = kwh("water")
        it1, _ = kwh("ups_out")
        if water_n and it1 > 0:
            out.append(point("site_efficiency", {}, {"water_l": water, "wue_l_per_kwh": water / it1}))
        return out

    def processed(*_: Any) -> None:
        progress["messages"] += 1

    kafka = access(Settings(), "admin")  # the same broker login as the monitor's, from its file
    login = dict(line.split("=", 1) for line in kafka.librdkafka_config().splitlines())
    broker = ConnectionConfig.from_librdkafka_dict({"bootstrap.servers": kafka.bootstrap, **login})
    app = Application(broker_address=broker, consumer_group=group, auto_offset_reset="earliest",
                      commit_interval=COMMIT_INTERVAL_S, state_dir=state_dir, loglevel="WARNING",
                      on_message_processed=processed)
    raw = app.topic(source, value_deserializer="json")
    results = app.topic(out_topic, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(raw)
    sdf = sdf.filter(lambda value: "samples" in value)  # watermark records: Quix keeps its own event time
    sdf = sdf.apply(lambda batch: batch["samples"], expand=True)
    sdf = sdf.apply(row)
    sdf = sdf.set_timestamp(lambda r, *_: r["t"])
    closed = (sdf.tumbling_window(duration_ms=window_ms, grace_ms=grace_ms, on_late=late)
              .agg(meters=Reduce(add_meters, lambda r: add_meters({}, r)), util=Collect("util"), cpu=Mean("cpu"),
                   kw=Mean("kw"), rated=Last("rated"), rack=Last("rack"), hall=Last("hall"))
              .final())
    closed = closed.apply(agent_closed, stateful=True, expand=True, metadata=True)
    closed.filter(lambda r: r["kind"] == "point").to_topic(results, key=lambda r: r["tags"]["site"])
    sites = closed.filter(lambda r: r["kind"] == "partial").group_by(lambda r: r["site"], name="site")
    sites = sites.set_timestamp(lambda p, *_: p["start"])
    sites = (sites.tumbling_window(duration_ms=window_ms, grace_ms=round(float(site_grace_s) * 1000),
                                   on_late=late_partial).collect().final())
    sites.apply(site_closed, expand=True).to_topic(results, key=lambda r: r["tags"]["site"])
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
    app = faust_app(group, settings, role="admin")  # its group is no pipeline's
    raw = app.topic(source, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(raw, concurrency=1)
    async def noop(stream: faust.StreamT) -> None:
        async for _events in stream.take_events(batch.batch_max_records, within=batch.batch_max_s):
            pass

    run_faust_worker(app)


# ---- Kafka, as the monitor sees it --------------------------------------------------------------

class Kafka:
    """The monitor's kafka-python admin client and a reader."""

    def __init__(self, kafka: KafkaAccess) -> None:
        from dcpulse import kafka_clients

        self.kafka = kafka
        self.admin = kafka_clients.admin(kafka, "bench-windows")

    def partitions(self, topic: str) -> int:
        return len(self.admin.describe_topics([topic])[0]["partitions"])

    def end_offsets(self, topic: str) -> dict[int, int]:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        found = self.admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.LATEST
                                                   for p in range(self.partitions(topic))})
        return {tp.partition: o.offset for tp, o in found.items()}

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        try:
            found = self.admin.list_group_offsets({group: None}).get(group, {})
        except Exception:  # the group does not exist yet
            return {}
        return {(tp.topic, tp.partition): o.offset for tp, o in found.items() if o.offset >= 0}

    def stable_members(self, group: str) -> int:
        """Members of the group if it is Stable (every member has its assignment), else 0."""
        try:
            found = self.admin.describe_groups([group]).get(group, {})
        except Exception:
            return 0
        return len(found.get("members") or []) if found.get("group_state") == "Stable" else 0

    def settle(self, group: str, timeout_s: float = 60.0) -> None:
        """Wait until the group has committed the end of every topic it reads (the site steps
        finish after the raw input is committed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = self.committed(group)
            topics = {t for t, _ in committed}
            if topics and all(committed.get((t, p), 0) >= end for t in topics for p, end in self.end_offsets(t).items()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"group {group} did not reach the end of its topics in {timeout_s:.0f} s")

    def read(self, topic: str) -> list[Record]:
        """Every record of `topic`, each partition in order."""
        from kafka import KafkaConsumer, TopicPartition

        ends = self.end_offsets(topic)
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not tps:
            return []
        out: dict[int, list[Record]] = defaultdict(list)
        consumer = KafkaConsumer(**self.kafka.client_config(), enable_auto_commit=False, group_id=None,
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


# ---- the simulated input ------------------------------------------------------------------------

@dataclass
class Produced:
    samples: int
    batches: int
    ticks: int
    sim_s: float
    bytes: int
    wall_s: float


def produce(kafka: KafkaAccess, topics: list[str], samples: int) -> Produced:
    """Whole hengqin ticks until they hold at least `samples` samples, every batch and watermark
    published to each of `topics` (identical copies)."""
    from dcpulse.producers.publisher import TelemetryPublisher
    from dcpulse.producers.run import RunStats, run_scenario
    from dcpulse.producers.scenario_args import build_scenario
    from dcpulse.producers.simulator import ScenarioSimulator

    sim = ScenarioSimulator(build_scenario(["hengqin"], None, [], SEED, START))
    publishers = [TelemetryPublisher(kafka, topic) for topic in topics]
    seen = [0]

    def send(key: bytes, value: bytes, ts_ms: int) -> None:
        for publisher in publishers:
            publisher.publish_raw(key, value, ts_ms)

    def broadcast(key: bytes, value: bytes, ts_ms: int) -> None:
        for publisher in publishers:
            publisher.broadcast(key, value, ts_ms)

    def count(stats: RunStats) -> None:
        seen[0] = stats.samples

    started = time.monotonic()
    # progress_every_s=0: count after every tick, so the run stops at the first tick that reaches N.
    stats = run_scenario(sim, 30 * 86400.0, None, send, broadcast, on_progress=count, progress_every_s=0.0,
                         stop=lambda: seen[0] >= samples)
    for publisher in publishers:
        publisher.close()
        if publisher.failures or publisher.sent != publisher.published:
            raise RuntimeError(f"publish failures: {dict(publisher.failures)}, sent {publisher.sent}/{publisher.published}")
    return Produced(stats.samples, stats.messages, stats.watermarks, stats.sim_s, stats.bytes,
                    time.monotonic() - started)


class SampleIndex:
    """Committed offsets -> samples: per partition, the samples in its records before each offset."""

    def __init__(self, records: list[Record]) -> None:
        self.before: dict[int, list[int]] = defaultdict(lambda: [0])
        for partition, _, key, value in records:
            n = 0 if key is None or key.endswith(b"/~watermark") else len(orjson.loads(value)["samples"])
            self.before[partition].append(self.before[partition][-1] + n)
        self.samples = sum(counts[-1] for counts in self.before.values())
        self.records = sum(len(counts) - 1 for counts in self.before.values())

    def at(self, committed: dict[int, int]) -> int:
        return sum(self.before[p][min(o, len(self.before[p]) - 1)] for p, o in committed.items())


# ---- running and watching workers ---------------------------------------------------------------

@dataclass
class Mark:
    t: float  # seconds after spawn
    samples: int  # committed
    cpu: float | None  # the workers' CPU seconds so far


@dataclass
class StageRun:
    samples: int
    steady: Mark  # the group Stable with every member in, something committed
    end: Mark  # every record committed
    broker_cpu_s: float | None

    @property
    def rate(self) -> float:
        return self.samples / self.end.t

    @property
    def steady_rate(self) -> float:
        """nan when the steady point already covered every sample (a run too short to tell)."""
        span = self.end.t - self.steady.t
        return (self.samples - self.steady.samples) / span if span > 0 else math.nan

    @property
    def per_cpu(self) -> float | None:
        return self.samples / self.end.cpu if self.end.cpu else None

    @property
    def steady_per_cpu(self) -> float | None:
        if self.end.cpu is None or self.steady.cpu is None or self.end.cpu <= self.steady.cpu:
            return None
        return (self.samples - self.steady.samples) / (self.end.cpu - self.steady.cpu)


def describe(run: StageRun) -> str:
    line = (f"{run.samples:,} samples, steady {run.steady_rate:,.0f} samples/s (from {run.steady.t:.1f} s, "
            f"{run.steady.samples:,} committed then), {run.rate:,.0f} samples/s from process start "
            f"({run.end.t:.1f} s)")
    if run.end.cpu is not None:
        line += f"; worker CPU {run.end.cpu:.1f} s = {run.per_cpu:,.0f} samples per CPU s"
        if run.steady_per_cpu:
            line += f" ({run.steady_per_cpu:,.0f} steady)"
    if run.broker_cpu_s is not None:
        line += f"; broker CPU meanwhile {run.broker_cpu_s:.1f} s"
    return line


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def cpu_sum(procs: list[subprocess.Popen]) -> float | None:
    found = [cpu_seconds(p.pid) for p in procs]
    return None if None in found else sum(found)  # type: ignore[arg-type]


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def stop(procs: list[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM (every worker shuts down cleanly on it), SIGKILL after the grace period; our children only."""
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


def run_workers(kafka: Kafka, group: str, topic: str, index: SampleIndex, cmds: list[list[str]],
                env: dict[str, str], logs: list[Path], timeout_s: float, broker_pid: int | None,
                on_done: Callable[[list[subprocess.Popen]], None] = lambda _: None) -> StageRun:
    """Spawn the workers of one group, watch until it has committed every record of `topic`,
    call `on_done` (e.g. wait for a later step), stop them. Raises with the log tail if a
    worker dies."""
    broker_before = cpu_seconds(broker_pid)
    spawned = time.monotonic()
    procs = [spawn(cmd, env, log) for cmd, log in zip(cmds, logs, strict=True)]
    steady: Mark | None = None
    try:
        while True:
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                    raise RuntimeError(f"worker exited with code {proc.returncode}:\n{tail}")
            now = time.monotonic() - spawned
            committed = {p: o for (t, p), o in kafka.committed(group).items() if t == topic}
            samples = index.at(committed)
            if steady is None and samples and kafka.stable_members(group) >= len(procs):
                steady = Mark(now, samples, cpu_sum(procs))
            if sum(committed.values()) >= index.records:
                end = Mark(now, samples, cpu_sum(procs))
                broker_after = cpu_seconds(broker_pid)
                broker = broker_after - broker_before if broker_before is not None and broker_after is not None else None
                on_done(procs)
                return StageRun(samples, steady or end, end, broker)
            if now > timeout_s:
                raise RuntimeError(f"not done after {timeout_s:.0f} s; see {logs[0]}")
            time.sleep(POLL_S)
    finally:
        stop(procs)


@dataclass
class Pipeline:
    """One dcpulse pipeline's topics: its own prefix, its own copy of the raw input."""

    prefix: str
    topics: Any  # TopicSettings

    @property
    def group(self) -> str:
        return self.topics.group("streams")  # dcpulse.streams.app.app_id


def run_dcpulse(kafka: Kafka, pipeline: Pipeline, index: SampleIndex, workers: int, workdir: Path,
                timeout_s: float, broker_pid: int | None) -> tuple[StageRun, dict[str, dict]]:
    """`workers` x `python -m dcpulse.cli streams` on the pipeline's topics; the run and, once
    the combiner has committed its input too, the results (point key -> fields)."""
    env = {**os.environ, "DCPULSE_TOPICS__PREFIX": pipeline.prefix, "DCPULSE_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "dcpulse.cli", "streams"]
    logs = [workdir / f"{pipeline.prefix}-streams-{i}.log" for i in range(workers)]
    settled: list[str] = []

    def settle(_procs: list[subprocess.Popen]) -> None:  # before the workers are stopped
        kafka.settle(pipeline.group)
        settled.append("yes")

    run = run_workers(kafka, pipeline.group, pipeline.topics.telemetry, index, [cmd] * workers, env, logs,
                      timeout_s, broker_pid, on_done=settle)
    return run, dcpulse_results(kafka, pipeline.topics)


def dcpulse_results(kafka: Kafka, topics: Any) -> dict[str, dict]:
    from dcpulse.contract import AnalyticsPoint

    points = [AnalyticsPoint.model_validate_json(v) for topic in (topics.pue, topics.utilisation)
              for _, _, _, v in kafka.read(topic)]
    return {p.key: p.fields for p in points}


def run_quix(kafka: Kafka, prefix: str, source: str, index: SampleIndex, workdir: Path, timeout_s: float,
             broker_pid: int | None, site_grace_s: float) -> tuple[StageRun, dict, list[dict]]:
    group, out_topic = f"{prefix}-quix", f"{prefix}.quix-results"
    log = workdir / "quix.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--quix-worker", source, group,
           out_topic, str(workdir / "quix-state"), str(site_grace_s)]
    # Quix's site windows close on later partials' timestamps: give its repartition topic time to drain.
    run = run_workers(kafka, group, source, index, [cmd], dict(os.environ), [log], timeout_s, broker_pid,
                      on_done=lambda _p: time.sleep(2 * COMMIT_INTERVAL_S))
    counts: dict = {}
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            counts = json.loads(line)
            break
    results = [json.loads(v) for _, _, _, v in kafka.read(out_topic)] if out_topic in kafka.admin.list_topics() else []
    return run, counts, results


def run_faust_noop(kafka: Kafka, prefix: str, source: str, index: SampleIndex, workdir: Path, timeout_s: float,
                   broker_pid: int | None) -> StageRun:
    group = f"{prefix}-faust-noop"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--faust-noop-worker", source, group]
    return run_workers(kafka, group, source, index, [cmd], dict(os.environ), [workdir / "faust-noop.log"],
                       timeout_s, broker_pid)


def compare(ours: dict[str, dict], reference: dict[str, Any], theirs: list[dict]) -> list[str]:
    """dcpulse against its offline reference (bit for bit), and against Quix where both compute
    the same thing: 1-minute PUE per category and rack utilisation."""
    same = set(ours) == set(reference) and all(ours[k] == reference[k].fields for k in reference)
    d_pue = {(p.time.timestamp() * 1000, p.tags["category"]): p.fields.get("pue") for p in reference.values()
             if p.measurement == "pue" and p.tags.get("window") == "1m"}
    d_util = {(p.time.timestamp() * 1000, p.tags["entity"]): p.fields for p in reference.values()
              if p.measurement == "utilisation" and p.tags["level"] == "rack" and p.tags["window"] == "1m"}
    q_pue = {(r["start"], r["tags"]["category"]): r["fields"].get("pue") for r in theirs if r["measurement"] == "pue"}
    q_util = {(r["start"], r["tags"]["entity"]): r["fields"] for r in theirs if r["measurement"] == "utilisation"}

    def diff(a: float | None, b: float | None) -> float:
        return 0.0 if a is None and b is None else math.inf if a is None or b is None else abs(a - b)

    common_pue = sorted(set(d_pue) & set(q_pue))
    pue_diff = max((diff(d_pue[k], q_pue[k]) for k in common_pue), default=math.nan)
    common_util = sorted(set(d_util) & set(q_util))
    util_diff = max((diff(d_util[k].get(f), q_util[k].get(f)) for k in common_util
                     for f in ("acc_util_mean", "acc_util_p95", "acc_util_max", "acc_samples")), default=math.nan)
    return [
        f"results: dcpulse {len(ours):,} points, identical to the offline reference: {'yes' if same else 'NO'}",
        f"compared with Quix: 1-minute PUE on {len(common_pue)} common (window, category) of dcpulse's "
        f"{len(d_pue)} and Quix's {len(q_pue)}, max |difference| {pue_diff:.3g}; rack utilisation on "
        f"{len(common_util):,} common (window, rack) of {len(d_util):,} and {len(q_util):,}, max |difference| "
        f"{util_diff:.3g}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300_000, help="hengqin samples to produce (whole ticks)")
    parser.add_argument("--workers", type=int, nargs="+", help="scale-out instead: dcpulse with these worker counts")
    parser.add_argument("--quix-site-grace", type=float, default=60.0,
                        help="grace of Quix's site window in seconds (its partials arrive one agent window late)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a stage after this many seconds")
    args = parser.parse_args()

    from importlib.metadata import version

    from dcpulse.services.manager import LocalServices
    from dcpulse.kafka_clients import access
    from dcpulse.services.kafka_acls import grant, pipeline_grants, revoke
    from dcpulse.services.topics import ensure_topics, topic_specs
    from dcpulse.settings import Settings, TopicSettings
    from dcpulse.streams.offline import reference_results

    settings = Settings()
    services = LocalServices(settings)
    services.up(lambda _m: None)
    broker_pid = services.kafka.process.pid()  # only read: its CPU time from /proc
    run_id = uuid.uuid4().hex[:8]
    # Time-based retention goes by the records' timestamps, the fixed simulated time (START).
    age_h = math.ceil((datetime.now(UTC) - START).total_seconds() / 3600)
    counts = args.workers or [1]
    pipelines = [Pipeline(f"bench-windows-{run_id}-{i}",
                          TopicSettings(prefix=f"bench-windows-{run_id}-{i}", telemetry_retention_hours=age_h + 24 * 30))
                 for i in range(len(counts))]
    admin = access(settings, "admin")
    kafka = Kafka(admin)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-windows-{run_id}-"))
    groups = [p.group for p in pipelines] + [f"{pipelines[0].prefix}-quix", f"{pipelines[0].prefix}-faust-noop"]
    try:
        for pipeline in pipelines:
            ensure_topics(admin, topic_specs(pipeline.topics))
            grant(admin, pipeline_grants(pipeline.topics))
        source = pipelines[0].topics.telemetry
        produced = produce(admin, [p.topics.telemetry for p in pipelines], args.samples)
        print(f"produced {produced.samples:,} hengqin samples in {produced.batches:,} batches and {produced.ticks} "
              f"ticks ({produced.sim_s:.0f} simulated s, {produced.bytes / produced.batches:,.0f} B per batch) in "
              f"{produced.wall_s:.1f} s into {len(pipelines)} cop{'y' if len(pipelines) == 1 else 'ies'} of a "
              f"{pipelines[0].topics.telemetry_partitions}-partition topic", flush=True)
        records = kafka.read(source)
        index = SampleIndex(records)
        started = time.perf_counter()
        reference = reference_results(records, pipelines[0].topics.telemetry_partitions)
        engine_s = time.perf_counter() - started
        del records
        print(f"(a) dcpulse pure engine (streams/offline.py: validation, partition stage, combiner; no Kafka): "
              f"{index.samples:,} samples in {engine_s:.1f} s = {index.samples / engine_s:,.0f} samples/s", flush=True)

        if args.workers:
            runs = []
            for pipeline, workers in zip(pipelines, counts, strict=True):
                run, results = run_dcpulse(kafka, pipeline, index, workers, workdir, args.timeout, broker_pid)
                runs.append((workers, run, results))
                print(f"dcpulse, {workers} worker(s): {describe(run)}", flush=True)
            base = runs[0][1].steady_per_cpu or runs[0][1].per_cpu
            for workers, run, _ in runs[1:]:
                mine = run.steady_per_cpu or run.per_cpu
                print(f"samples per worker CPU-second, {workers} workers / {runs[0][0]}: {mine / base:.2f} "
                      f"(target >= 0.85)", flush=True)
            identical = all(results == runs[0][2] for _, _, results in runs) and \
                set(runs[0][2]) == set(reference) and all(runs[0][2][k] == p.fields for k, p in reference.items())
            print(f"results of every worker count identical to each other and to the offline reference: "
                  f"{'yes' if identical else 'NO'}", flush=True)
            return

        dcpulse, ours = run_dcpulse(kafka, pipelines[0], index, 1, workdir, args.timeout, broker_pid)
        print(f"(b) dcpulse worker (`dcpulse streams`, both agents, every batch checkpointed): {describe(dcpulse)}",
              flush=True)
        quix, progress, theirs = run_quix(kafka, pipelines[0].prefix, source, index, workdir, args.timeout,
                                          broker_pid, args.quix_site_grace)
        print(f"(c) Quix Streams {version('quixstreams')} (its own windowed aggregations, see above; "
              f"{len(theirs):,} results, late samples {progress.get('late_samples', 0):,}, late partials "
              f"{progress.get('late_partials', 0):,}): {describe(quix)}", flush=True)
        noop = run_faust_noop(kafka, pipelines[0].prefix, source, index, workdir, args.timeout, broker_pid)
        print(f"(d) faust-streaming alone (no-op agent, same batches and client settings): {describe(noop)}",
              flush=True)
        print(f"ratio dcpulse / Quix Streams: {dcpulse.steady_rate / quix.steady_rate:.2f} in steady samples/s "
              f"(target >= 1.5), {dcpulse.rate / quix.rate:.2f} from process start; dcpulse / faust no-op "
              f"{dcpulse.steady_rate / noop.steady_rate:.2f}", flush=True)
        for line in compare(ours, reference, theirs):
            print(line, flush=True)
    finally:
        for pipeline in pipelines:
            revoke(admin, pipeline_grants(pipeline.topics))
        kafka.delete(run_id, groups)
        kafka.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--quix-worker":
        quix_worker(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--faust-noop-worker":
        faust_noop_worker(*sys.argv[2:])
    else:
        main()
