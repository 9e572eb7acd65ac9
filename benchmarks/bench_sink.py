"""InfluxDB sink throughput against a plain influxdb-client write loop, measured in one run.

    ./run python benchmarks/bench_sink.py                  # 100,000 hengqin records
    .venv/bin/python benchmarks/bench_sink.py --records 20000 --profile 25

1. Generates N telemetry records with the simulator (hengqin, seed 7, starting 30 minutes ago
   so every point is inside the raw retention) and keeps their Kafka key, value and timestamp.
2. Baseline: the same records converted to Points beforehand (not timed), written with
   influxdb-client's SYNCHRONOUS write API, gzip on, in batches of 5,000, into a fresh bucket.
3. The sink: the records are produced to a fresh 6-partition topic first (not timed, flushed),
   then `KafkaToInflux` (sinks/runner.py) consumes them into another fresh bucket; timed from
   its start until `stats.written` reaches N. That includes the Kafka fetch, JSON validation,
   Point building, the writes and the offset commits (target: >= 0.7 of the baseline).
A server sample carries about 40 fields, so points/s is reported with field values/s.
`--profile K` runs the sink under cProfile and prints its K most expensive functions (the
sink's figures are then inflated by the profiler; the baseline is not profiled).
Starts the local servers if needed (`dcpulse services up`); deletes its buckets, topic and the
sink's consumer group at the end, also on error. Uses the admin token (the scoped write token
only covers the standard buckets).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from influxdb_client import BucketRetentionRules, InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from dcpulse.contract import Telemetry, utc_now
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario, current_minute
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.points import telemetry_point
from dcpulse.sinks.query import sample_count_query
from dcpulse.sinks.runner import KafkaToInflux, raw_telemetry_point

Record = tuple[bytes, bytes, int]  # Kafka key, value, timestamp (ms)
BATCH = 5000  # the sink's max_poll_records, so the baseline writes batches of the sink's size


@dataclass
class Result:
    points: int
    fields: int
    wall_s: float
    batches: int = 0
    first_write_s: float = 0.0  # sink only: start -> first batch acknowledged (group join, first fetch)

    @property
    def points_per_s(self) -> float:
        return self.points / self.wall_s

    @property
    def fields_per_s(self) -> float:
        return self.fields / self.wall_s


def generate(count: int) -> list[Record]:
    """`count` hengqin records as the simulator publishes them; the start lies 30 minutes back so
    the sink's retention check accepts them all (and InfluxDB keeps them)."""
    sim = ScenarioSimulator(build_scenario(["hengqin"], None, [], 7, current_minute() - timedelta(minutes=30)))
    records: list[Record] = []

    def collect(key: bytes, value: bytes, ts_ms: int) -> None:
        records.append((key, value, ts_ms))

    # hengqin yields ~298 messages per simulated second; stop as soon as there are enough.
    run_scenario(sim, count / 250 + 60, None, collect, stop=lambda: len(records) >= count)
    if len(records) < count:
        raise RuntimeError(f"simulator gave {len(records)} records, wanted {count}")
    return records[:count]


def produce(settings: Settings, topic: str, records: list[Record]) -> None:
    publisher = TelemetryPublisher(settings.kafka.bootstrap, topic)
    for key, value, ts_ms in records:
        publisher.publish_raw(key, value, ts_ms)
    publisher.close()
    if publisher.failures or publisher.sent != len(records):
        raise RuntimeError(f"produce failures: {dict(publisher.failures)}, sent {publisher.sent}/{len(records)}")


def baseline(url: str, token: str, org: str, bucket: str, points: list[Point], fields: int) -> Result:
    """influxdb-client on its own: the same Points, SYNCHRONOUS, gzip, batches of BATCH."""
    with InfluxDBClient(url=url, token=token, org=org, timeout=30_000, enable_gzip=True) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        started = time.perf_counter()
        for i in range(0, len(points), BATCH):
            write.write(bucket=bucket, org=org, record=points[i:i + BATCH])
        wall = time.perf_counter() - started
        write.close()
    return Result(len(points), fields, wall, batches=-(-len(points) // BATCH))


def run_sink(settings: Settings, token: str, topic: str, bucket: str, count: int, fields: int,
             profile_top: int, timeout_s: float) -> tuple[Result, KafkaToInflux]:
    """KafkaToInflux in its own thread, as `dcpulse sink` runs it; timed until N are written."""
    sink = KafkaToInflux(settings, InfluxWriter(settings.influx.url, token, settings.influx.org), name="bench",
                         topics=[topic], bucket=bucket, to_point=raw_telemetry_point(settings))
    profiler = cProfile.Profile() if profile_top else None
    failure: list[BaseException] = []

    def target() -> None:
        # cProfile only sees the thread that enabled it, so enable it inside the sink's thread.
        if profiler:
            profiler.enable()
        try:
            sink.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
        finally:
            if profiler:
                profiler.disable()

    thread = threading.Thread(target=target, name="sink-bench")
    first_write = 0.0
    started = time.perf_counter()
    thread.start()
    try:
        while sink.stats.written < count:
            now = time.perf_counter()
            if not first_write and sink.stats.written:
                first_write = now - started
            if not thread.is_alive():
                raise RuntimeError(f"sink stopped after {sink.stats.written}/{count} points: {failure or 'no error'}")
            if now - started > timeout_s:
                raise RuntimeError(f"sink wrote {sink.stats.written}/{count} points in {timeout_s:.0f} s")
            time.sleep(0.005)  # a short nap: keeps the GIL with the sink, adds at most 5 ms
        wall = time.perf_counter() - started
        first_write = first_write or wall  # N fitted in the first batch
    finally:
        sink.stopping.set()
        thread.join(timeout=60)
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        print(out.getvalue())
    return Result(sink.stats.written, fields, wall, sink.stats.batches, first_write), sink


def stored_points(client: InfluxDBClient, bucket: str) -> int:
    """Distinct (series, time) points in a bucket: every point has exactly one `seq` field."""
    tables = client.query_api().query(sample_count_query(bucket, utc_now() - timedelta(hours=2)))
    return sum(int(row.get_value()) for table in tables for row in table.records)


@contextmanager
def scratch(settings: Settings, token: str, buckets: list[str], topic: str) -> Iterator[InfluxDBClient]:
    """Fresh buckets (raw retention, like dcpulse_raw) and a fresh topic; all deleted at the end,
    with the sink's consumer group, whatever happened in between."""
    client = InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=60_000)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    created = []
    try:
        retention = BucketRetentionRules(type="expire", every_seconds=settings.influx.buckets.raw_retention_hours * 3600)
        for name in buckets:
            created.append(client.buckets_api().create_bucket(bucket_name=name, retention_rules=retention,
                                                              org=settings.influx.org))
        admin.create_topics([NewTopic(topic, settings.topics.telemetry_partitions, 1)])
        yield client
    finally:
        for bucket in created:
            client.buckets_api().delete_bucket(bucket)
        try:
            admin.delete_topics([topic])
            # Its offsets only point at the deleted topic; a missing group is reported, not raised.
            admin.delete_groups(["dcpulse-sink-bench"])
        finally:
            admin.close()
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="telemetry records (N)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="run the sink under cProfile and print its K most expensive functions")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on the sink after this many s")
    args = parser.parse_args()
    settings = Settings()
    services = LocalServices(settings)
    services.up(lambda _m: None)
    token = services.credentials().admin_token
    org = settings.influx.org

    records = generate(args.records)
    # Converted before the timed baseline: the baseline measures the writes alone.
    events = [Telemetry.from_bytes(value) for _, value, _ in records]
    points = [telemetry_point(event) for event in events]
    fields = sum(len(event.metrics) + 1 for event in events)  # metrics + seq
    mean_bytes = sum(len(value) for _, value, _ in records) / len(records)
    del events

    run_id = uuid.uuid4().hex[:8]
    base_bucket, sink_bucket, topic = f"bench_{run_id}_baseline", f"bench_{run_id}_sink", f"bench.sink.{run_id}"
    with scratch(settings, token, [base_bucket, sink_bucket], topic) as client:
        produce(settings, topic, records)
        base = baseline(settings.influx.url, token, org, base_bucket, points, fields)
        del points
        ours, sink = run_sink(settings, token, topic, sink_bucket, args.records, fields, args.profile, args.timeout)
        stored = (stored_points(client, base_bucket), stored_points(client, sink_bucket))

    n = args.records
    print(f"records: {n:,} hengqin samples, mean {mean_bytes:.0f} B, {fields / n:.1f} fields per point "
          f"(server samples ~40); points stored: baseline {stored[0]:,}, sink {stored[1]:,}")
    print(f"baseline influxdb-client SYNCHRONOUS+gzip, batches of {BATCH:,}: {n:,} points in {base.wall_s:.2f} s = "
          f"{base.points_per_s:,.0f} points/s, {base.fields_per_s:,.0f} field values/s")
    print(f"sink KafkaToInflux (consume, validate, build, write, commit): {ours.points:,} points in {ours.wall_s:.2f} s"
          f" = {ours.points_per_s:,.0f} points/s, {ours.fields_per_s:,.0f} field values/s; {ours.batches} batches, "
          f"mean batch {ours.points / max(ours.batches, 1):,.0f} points; first batch written after "
          f"{ours.first_write_s:.2f} s; dead-lettered {dict(sink.stats.dead_lettered)}, "
          f"write retries {sink.stats.write_retries}")
    print(f"ratio sink / baseline: {ours.points_per_s / base.points_per_s:.2f} (target >= 0.7)"
          + (" [sink profiled: its figures are inflated]" if args.profile else ""))


if __name__ == "__main__":
    main()
