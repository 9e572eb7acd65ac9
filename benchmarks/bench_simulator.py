"""Simulator and publisher throughput, each against its baseline, measured in one run.

    ./run python benchmarks/bench_simulator.py            # hengqin, defaults below
    .venv/bin/python benchmarks/bench_simulator.py --preset hengqin --sim-seconds 600
    .venv/bin/python benchmarks/bench_simulator.py --preset shaoguan-tencent --sim-seconds 60 --publish-seconds 0

1. Simulator only (no Kafka): simulated seconds per wall second for the preset (target >= 20x
   real time on one core for hengqin), messages (agent batches)/s and device samples/s.
2. Publisher (skipped with --publish-seconds 0): the simulator's records, generated into memory
   first, published through TelemetryPublisher (batches to their key's partition, each tick's
   watermark to every partition) into a fresh topic as fast as possible, against a bare
   kafka-python producer (what kafka.benchmarks.producer_performance does, in this process so
   its login stays off the command line) sending the same number of records of the same mean
   size with the same producer settings into another fresh topic (target ratio >= 0.7). Both
   log in as the agent role.
Starts the local servers if needed (`dcpulse services up`); deletes its topics at the end.
"""

from __future__ import annotations

import argparse
import time
import uuid

from kafka.admin import NewTopic

from dcpulse import kafka_clients
from dcpulse.kafka_clients import access
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.services.kafka_acls import Grant, grant, revoke
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings


def simulator_only(preset: str, seconds: float) -> dict[str, float]:
    sim = ScenarioSimulator(build_scenario([preset], None, [], 7, None))
    cpu = time.process_time()
    stats = run_scenario(sim, seconds, None, lambda *_: None, lambda *_: None)
    cpu = time.process_time() - cpu  # one thread: what a core does, whatever else shares the machine
    return {"messages": stats.messages, "samples": stats.samples, "wall_s": stats.wall_s,
            "x_real_time": seconds / stats.wall_s, "x_per_cpu_s": seconds / cpu, "msg_per_s": stats.rate,
            "samples_per_s": stats.sample_rate, "mean_bytes": stats.bytes / stats.messages}


def publish(settings: Settings, preset: str, seconds: float, topic: str) -> dict[str, float]:
    """Simulate into memory, then time the publisher alone on those records (flush included)."""
    sim = ScenarioSimulator(build_scenario([preset], None, [], 7, None))
    sends: list[tuple[bool, bytes, bytes, int]] = []  # (to every partition?, key, value, timestamp)
    stats = run_scenario(sim, seconds, None, lambda k, v, t: sends.append((False, k, v, t)),
                         lambda k, v, t: sends.append((True, k, v, t)))
    publisher = TelemetryPublisher(access(settings, "agent"), topic)
    copies = publisher.partitioner.partitions  # fetches the metadata before the clock starts
    started = time.monotonic()
    for everywhere, key, value, timestamp in sends:
        (publisher.broadcast if everywhere else publisher.publish_raw)(key, value, timestamp)
    publisher.close()
    wall = time.monotonic() - started
    if publisher.failures or publisher.sent != publisher.published:
        raise RuntimeError(f"publish failures: {dict(publisher.failures)}, sent {publisher.sent}/{publisher.published}")
    records = publisher.published
    size = sum(len(value) * (copies if everywhere else 1) for everywhere, _, value, _ in sends) / records
    return {"messages": stats.messages, "samples": stats.samples, "records": records, "wall_s": wall,
            "records_per_s": records / wall, "simulate_s": stats.wall_s, "mean_bytes": size}


def kafka_python_baseline(settings: Settings, count: int, size: int, topic: str) -> dict[str, float]:
    """A bare kafka-python producer with the same settings and login sending `count` records
    of `size` zero bytes, flush and close included: kafka-python's own producer_performance loop."""
    producer = kafka_clients.producer(access(settings, "agent"), "bench-baseline")
    payload = bytes(size)
    producer.partitions_for(topic)  # the metadata before the clock starts
    futures = []
    started = time.monotonic()
    for _ in range(count):
        futures.append(producer.send(topic, payload))
    producer.flush()
    producer.close()
    seconds = time.monotonic() - started
    failed = sum(1 for f in futures if f.failed())
    if failed:
        raise RuntimeError(f"baseline: {failed} of {count} failed")
    return {"records": count, "wall_s": seconds, "records_per_s": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hengqin")
    parser.add_argument("--sim-seconds", type=float, default=600.0, help="simulated seconds, simulator only")
    parser.add_argument("--publish-seconds", type=float, default=120.0,
                        help="simulated seconds published (0: skip the Kafka part)")
    args = parser.parse_args()
    settings = Settings()
    sim = simulator_only(args.preset, args.sim_seconds)
    print(f"simulator only, {args.preset}, {args.sim_seconds:.0f} simulated s: {sim['wall_s']:.2f} s wall, "
          f"{sim['x_real_time']:.1f}x real time ({sim['x_per_cpu_s']:.1f}x per CPU second), "
          f"{sim['msg_per_s']:,.0f} messages/s, "
          f"{sim['samples_per_s']:,.0f} samples/s ({sim['samples'] / sim['messages']:.1f} samples and "
          f"{sim['mean_bytes']:,.0f} B per message)")
    if not args.publish_seconds:
        return
    LocalServices(settings).up(lambda _m: None)
    run_id = uuid.uuid4().hex[:8]
    topics = [f"bench.sim.{run_id}", f"bench.baseline.{run_id}"]
    kafka = access(settings, "admin")
    admin = kafka_clients.admin(kafka, "bench-simulator")
    admin.create_topics([NewTopic(t, settings.topics.telemetry_partitions, 1) for t in topics])
    may_write = [Grant("agent", "write", "topic", t) for t in topics]
    grant(kafka, may_write)
    try:
        ours = publish(settings, args.preset, args.publish_seconds, topics[0])
        base = kafka_python_baseline(settings, int(ours["records"]), int(round(ours["mean_bytes"])), topics[1])
    finally:
        revoke(kafka, may_write)
        admin.delete_topics(topics)
        admin.close()
    print(f"publish, {args.preset}, {args.publish_seconds:.0f} simulated s: {ours['messages']:,.0f} messages "
          f"({ours['samples']:,.0f} samples) + watermarks = {ours['records']:,.0f} records of {ours['mean_bytes']:,.0f} B "
          f"in {ours['wall_s']:.2f} s = {ours['records_per_s']:,.0f} records/s (simulating them took "
          f"{ours['simulate_s']:.2f} s)")
    print(f"bare kafka-python producer, same count, size, settings and login: {base['wall_s']:.2f} s = "
          f"{base['records_per_s']:,.0f} records/s")
    print(f"ratio publisher / bare producer: {ours['records_per_s'] / base['records_per_s']:.2f} "
          f"(target >= 0.7); simulator alone {sim['x_real_time']:.1f}x real time (target >= 20x for hengqin)")

if __name__ == "__main__":
    main()
