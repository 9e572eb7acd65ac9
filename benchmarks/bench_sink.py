"""Raw sink throughput against influxdb-client's Point loop and influxd's own ceiling, in one run.

    .venv/bin/python benchmarks/bench_sink.py                   # 100,000 hengqin samples
    .venv/bin/python benchmarks/bench_sink.py --samples 30000 --profile 25

1. The simulator (hengqin, seed 7, starting 30 minutes ago so every sample is inside the raw
   retention) gives at least N samples as `dcpulse.telemetry/2` batches (a rack's PDU and
   servers together), the shape of the valid topic.
2. Ceiling: the same samples as line protocol, built and gzip-compressed beforehand (not timed)
   in 5,000-line bodies, posted one after another: what influxd itself takes from one writer.
3. Baseline: the same samples as influxdb-client `Point`s, built beforehand (not timed), written
   with its SYNCHRONOUS write API, gzip on (the client's), in batches of 5,000 points.
4. The sink: the batches are produced to the sandbox's valid topic first (not timed), then the
   raw sink (`kafka_sink`, sinks/runner.py, as `dcpulse sink` builds it) consumes them; timed from
   its start, group join included, until InfluxDB acknowledged all N lines. That includes the
   Kafka fetch, the parse, the line building, gzip, the writes and the offset commits.
Each writes into its own fresh bucket, so each pays for creating the same series. Ratios: sink /
baseline (target >= 1.5) and sink / ceiling. `--profile K` runs the sink under cProfile and
prints its K most expensive functions (the sink's figures are then inflated by the profiler).
Everything runs in a sandbox (own topics, buckets and consumer group on the local servers,
started if needed), deleted at the end, also on error. Uses the admin token (the sandbox's
buckets are the admin's).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import pstats
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.service.write_service import WriteService

from dcpulse import kafka_clients
from dcpulse.contract import TelemetryBatch, utc_now
from dcpulse.kafka_clients import access
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario, current_minute
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.sandbox import sandbox
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.influx import InfluxWriter
from dcpulse.sinks.query import sample_count_query
from dcpulse.sinks.runner import BATCH_LINES, kafka_sink, raw_lines
from dcpulse.sinks.sink import Sink

Record = tuple[bytes, bytes, int]  # Kafka key, value, timestamp (ms)


@dataclass
class Result:
    points: int
    wall_s: float

    @property
    def per_s(self) -> float:
        return self.points / self.wall_s


def generate(samples: int) -> tuple[list[Record], int, int]:
    """Whole hengqin batches until they hold at least `samples` samples; their samples and field
    values (metrics + seq)."""
    sim = ScenarioSimulator(build_scenario(["hengqin"], None, [], 7, current_minute() - timedelta(minutes=30)))
    records: list[Record] = []
    count = fields = 0

    def collect(key: bytes, value: bytes, ts_ms: int) -> None:
        nonlocal count, fields
        records.append((key, value, ts_ms))
        batch = TelemetryBatch.model_validate_json(value)
        count += len(batch.samples)
        fields += sum(len(sample.metrics) + 1 for sample in batch.samples)

    # Watermarks are left out: the valid topic carries batches only.
    run_scenario(sim, 1800, None, collect, lambda *_: None, stop=lambda: count >= samples)
    if count < samples:
        raise RuntimeError(f"30 simulated minutes gave {count} samples, wanted {samples}")
    return records, count, fields


def points_of(records: list[Record]) -> list[Point]:
    """The samples as an influxdb-client user writes them: the same measurement, tags, fields, time."""
    points = []
    for _, value, _ in records:
        batch = TelemetryBatch.model_validate_json(value)
        for sample in batch.samples:
            point = Point(sample.kind.value).tag("site", batch.site).tag("device", sample.device)
            for tag in ("hall", "row", "rack"):
                if (location := getattr(sample, tag)) is not None:
                    point.tag(tag, location)
            for name, number in sample.metrics.items():
                point.field(name, number)
            points.append(point.field("seq", sample.seq).time(sample.ts, WritePrecision.NS))
    return points


def baseline(settings: Settings, token: str, bucket: str, points: list[Point]) -> Result:
    with InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=60_000,
                        enable_gzip=True) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        started = time.perf_counter()
        for i in range(0, len(points), BATCH_LINES):
            write.write(bucket=bucket, record=points[i:i + BATCH_LINES])
        return Result(len(points), time.perf_counter() - started)


def ceiling(settings: Settings, token: str, bucket: str, records: list[Record]) -> Result:
    convert = raw_lines(settings)
    lines = [line for _, value, _ in records for line in convert(value).lines]
    bodies = [gzip.compress(b"\n".join(lines[i:i + BATCH_LINES]), 1) for i in range(0, len(lines), BATCH_LINES)]
    # The client's own gzip stays off: the bodies are compressed already.
    with InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=60_000) as client:
        service = WriteService(client.api_client)
        started = time.perf_counter()
        for body in bodies:
            service.post_write(org=settings.influx.org, bucket=bucket, body=body, precision=WritePrecision.NS,
                               content_encoding="gzip", content_type="text/plain; charset=utf-8")
        return Result(len(lines), time.perf_counter() - started)


def produce(settings: Settings, records: list[Record]) -> None:
    publisher = TelemetryPublisher(access(settings, "admin"), settings.topics.telemetry_valid)  # as a worker would
    for key, value, ts_ms in records:
        publisher.publish_raw(key, value, ts_ms)
    publisher.close()
    if publisher.failures or publisher.sent != len(records):
        raise RuntimeError(f"produce failures: {dict(publisher.failures)}, sent {publisher.sent}/{len(records)}")


def run_sink(settings: Settings, token: str, bucket: str, count: int, profile_top: int,
             timeout_s: float) -> tuple[Result, Sink, float]:
    """The raw sink in its own thread, as `dcpulse sink` runs it; timed until `count` lines are
    acknowledged. Also returns the time to the first acknowledged batch (group join, first fetch)."""
    sink = kafka_sink(settings, InfluxWriter(settings.influx.url, token, settings.influx.org), name="bench",
                      topics=[settings.topics.telemetry_valid], bucket=bucket, convert=raw_lines(settings))
    profiler = cProfile.Profile() if profile_top else None
    failure: list[BaseException] = []

    def target() -> None:
        if profiler:  # cProfile only sees the thread that enabled it
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
            time.sleep(0.005)  # a short nap: leaves the GIL to the sink, adds at most 5 ms
        wall = time.perf_counter() - started
    finally:
        sink.stopping.set()
        thread.join(timeout=60)
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        print(out.getvalue())
    return Result(sink.stats.written, wall), sink, first_write or wall


@contextmanager
def buckets(client: InfluxDBClient, org: str, names: list[str]) -> Iterator[None]:
    """Extra fresh buckets, deleted at the end."""
    created = [client.buckets_api().create_bucket(bucket_name=name, org=org) for name in names]
    try:
        yield
    finally:
        for bucket in created:
            client.buckets_api().delete_bucket(bucket)


def stored(client: InfluxDBClient, bucket: str) -> int:
    """Distinct (series, time) points in a bucket: every point has exactly one `seq` field."""
    tables = client.query_api().query(sample_count_query(bucket, utc_now() - timedelta(hours=2)))
    return sum(int(row.get_value()) for table in tables for row in table.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000, help="telemetry samples (N), in whole batches")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="run the sink under cProfile and print its K most expensive functions")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on the sink after this many s")
    args = parser.parse_args()
    base = Settings()
    services = LocalServices(base)
    services.up(lambda _m: None)
    token = services.credentials().admin_token

    records, n, fields = generate(args.samples)
    points = points_of(records)  # built before the timed baseline: it measures the writes alone
    with sandbox(base, token, "bench-sink") as settings, \
            InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=60_000) as client:
        raw = settings.influx.buckets.raw
        extra = [f"{raw}_baseline", f"{raw}_ceiling"]
        with buckets(client, settings.influx.org, extra):
            produce(settings, records)
            # The sink last: InfluxDB's background work on the earlier buckets (snapshots,
            # compactions) then weighs on the sink, not on what it is compared with.
            ceiling_result = ceiling(settings, token, extra[1], records)
            base_result = baseline(settings, token, extra[0], points)
            del points
            ours, sink, first_write_s = run_sink(settings, token, raw, n, args.profile, args.timeout)
            counts = [stored(client, bucket) for bucket in (raw, *extra)]
        admin = kafka_clients.admin(access(settings, "admin"), "bench-sink")
        try:
            admin.delete_groups([settings.topics.group("sink-bench")])  # the sandbox deletes topics, not groups
        finally:
            admin.close()

    print(f"samples: {n:,} hengqin samples in {len(records):,} batches ({n / len(records):.1f} per batch), "
          f"{fields / n:.1f} fields per point; points stored: sink {counts[0]:,}, baseline {counts[1]:,}, "
          f"ceiling {counts[2]:,}")
    print(f"(a) sink (fetch, parse, build lines, gzip, write, commit): {ours.points:,} points in {ours.wall_s:.2f} s = "
          f"{ours.per_s:,.0f} points/s, {fields / ours.wall_s:,.0f} field values/s; {sink.stats.batches} batches, "
          f"first acknowledged after {first_write_s:.2f} s; dead-lettered {dict(sink.dead_letters.counts)}, "
          f"retries {sink.retry.retries}" + (" [profiled: inflated]" if args.profile else ""))
    print(f"(b) baseline influxdb-client Points, SYNCHRONOUS, gzip, batches of {BATCH_LINES:,}: "
          f"{base_result.wall_s:.2f} s = {base_result.per_s:,.0f} points/s")
    print(f"(c) ceiling influxd, pre-built gzip line protocol, {BATCH_LINES:,}-line bodies: "
          f"{ceiling_result.wall_s:.2f} s = {ceiling_result.per_s:,.0f} points/s")
    print(f"ratios: sink / baseline {ours.per_s / base_result.per_s:.2f} (target >= 1.5), "
          f"sink / ceiling {ours.per_s / ceiling_result.per_s:.2f}")


if __name__ == "__main__":
    main()
