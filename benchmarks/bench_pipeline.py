"""End-to-end sustained rate and event-to-InfluxDB lag for a preset at increasing speed.

    .venv/bin/python benchmarks/bench_pipeline.py                      # hengqin, speeds 8 16 20 24
    .venv/bin/python benchmarks/bench_pipeline.py --speeds 20 --workers 2 --seconds 90
    .venv/bin/python benchmarks/bench_pipeline.py --speeds 20 --security sasl_ssl plaintext

For each speed the whole pipeline runs in a sandbox (own topics and buckets on the local
servers): the simulator publishes `--seconds` of wall time paced at N x real time, the Faust
worker(s) (`--workers`, one consumer group) validate and window, the sinks write to InfluxDB. Once a second the benchmark reads
the newest facility-meter sample in the raw bucket; its lag is the wall time since that sample
was published (the publisher is paced, so a sample of simulated time t left at
start + t / N). The first `--warmup` seconds (worker start-up) are left out of the lag figures.
A speed "keeps up" when the p99 lag stays under `--max-lag` (default 5 s) and the backlog
drains within it after publishing stops; the run stops at the first speed that does not.
Everything (simulator, publisher, Kafka, InfluxDB, workers, sinks) shares this machine's cores.

`--security` runs every speed once per broker mode given (the broker is restarted in each,
`kafka.security`, and in the configured mode at the end), and prints the CPU seconds the broker
and the pipeline processes (workers, sink) spent per mode: what TLS and SCRAM cost end to end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from datetime import datetime

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import RunStats, run_scenario
from dcpulse.producers.scenario_args import build_scenario, current_minute
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.sandbox import sandbox
from dcpulse.services.manager import LocalServices
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.query import flux_string, flux_time, read_rows


def newest_sample(settings: Settings, site: str, since: datetime) -> datetime | None:
    query = (f"from(bucket: {flux_string(settings.influx.buckets.raw)}) |> range(start: {flux_time(since)}, stop: 2100-01-01T00:00:00Z)"
             f' |> filter(fn: (r) => r._measurement == "facility_meter" and r.site == {flux_string(site)}'
             ' and r._field == "energy_kwh") |> last()')
    rows = read_rows(settings.influx.url, influx_token(settings, "read"), settings.influx.org, query)
    return rows[-1]["_time"] if rows else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_speed(base: Settings, admin_token: str, preset: str, speed: float, seconds: float, warmup: float,
              max_lag: float, workers: int, broker_pid: int) -> dict[str, float]:
    with sandbox(base, admin_token, f"bench-e2e-{int(speed)}x") as settings, \
            running_pipeline(settings, workers=workers) as pipeline:
        pids = [broker_pid, *(p.pid for p in pipeline.procs.values())]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        start = current_minute()
        sim = ScenarioSimulator(build_scenario([preset], None, [], 7, start))
        site = sim.sites[0].site.name
        publisher = TelemetryPublisher(access(settings, "agent"), settings.topics.telemetry)
        stats_box: list[RunStats] = []
        wall0 = time.monotonic()
        thread = threading.Thread(target=lambda: stats_box.append(
            run_scenario(sim, seconds * speed, speed, publisher.publish_raw, publisher.broadcast)))
        thread.start()
        lags: list[float] = []
        while thread.is_alive():
            time.sleep(1.0)
            pipeline.check_alive()
            newest = newest_sample(settings, site, start)
            now = time.monotonic()
            if newest is not None and now - wall0 > warmup:
                published_at = wall0 + (newest - start).total_seconds() / speed
                lags.append(max(0.0, now - published_at))
        publisher.close()
        stats = stats_box[0]
        last_tick = start.timestamp() + stats.sim_s
        drain_started = time.monotonic()
        drained = None
        while time.monotonic() - drain_started < max_lag * 2:
            newest = newest_sample(settings, site, start)
            if newest is not None and newest.timestamp() >= last_tick:
                drained = time.monotonic() - drain_started
                break
            time.sleep(0.5)
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu0)]
    p50 = statistics.median(lags) if lags else float("nan")
    p99 = percentile(lags, 99) if lags else float("nan")
    kept_up = bool(lags) and p99 <= max_lag and drained is not None and drained <= max_lag
    return {"speed": speed, "offered": stats.messages / seconds, "published": stats.rate, "messages": stats.messages,
            "samples_s": stats.samples / seconds,
            "p50": p50, "p99": p99, "drain": drained if drained is not None else float("inf"),
            "behind": stats.behind_s, "kept_up": kept_up, "broker_cpu": cpu[0], "pipeline_cpu": sum(cpu[1:]),
            "samples": stats.samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hengqin")
    parser.add_argument("--speeds", type=float, nargs="+", default=[8, 16, 20, 24])
    parser.add_argument("--workers", type=int, default=1, help="`dcpulse streams` processes in the group")
    parser.add_argument("--seconds", type=float, default=60.0, help="wall seconds of publishing per speed")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--max-lag", type=float, default=5.0)
    parser.add_argument("--security", nargs="+", choices=["sasl_ssl", "plaintext"],
                        help="broker modes to compare (default: the configured one, broker not restarted)")
    args = parser.parse_args()
    modes = args.security or [None]
    configured = Settings().kafka.security
    print(f"{args.preset}, {args.workers} stream worker(s), {args.seconds:g} s of publishing per speed")
    print(f"{'broker':>9} {'speed':>6} {'offered msg/s':>14} {'samples/s':>10} {'published msg/s':>16} "
          f"{'lag p50 s':>10} {'lag p99 s':>10} {'drain s':>8} {'CPU us/sample broker':>21} {'pipeline':>9}  kept up")
    try:
        for mode in modes:
            if mode is not None:  # the children (workers, sink) read it from the environment
                os.environ["DCPULSE_KAFKA__SECURITY"] = mode
            base = Settings()
            services = LocalServices(base)
            if mode is not None:
                services.down(lambda _m: None, only=["kafka"])
            services.up(lambda _m: None)
            admin = services.credentials().admin_token
            for speed in args.speeds:
                r = run_speed(base, admin, args.preset, speed, args.seconds, args.warmup, args.max_lag, args.workers,
                              services.kafka.process.pid())
                print(f"{base.kafka.security:>9} {r['speed']:>5.0f}x {r['offered']:>14,.0f} {r['samples_s']:>10,.0f} "
                      f"{r['published']:>16,.0f} {r['p50']:>10.1f} {r['p99']:>10.1f} {r['drain']:>8.1f} "
                      f"{r['broker_cpu'] / r['samples'] * 1e6:>21.1f} {r['pipeline_cpu'] / r['samples'] * 1e6:>9.1f}  "
                      f"{'yes' if r['kept_up'] else 'NO'}", flush=True)
                if not r["kept_up"]:
                    break
    finally:
        if args.security:  # the broker back in the configured mode
            os.environ["DCPULSE_KAFKA__SECURITY"] = configured
            services = LocalServices(Settings())
            services.down(lambda _m: None, only=["kafka"])
            services.up(lambda _m: None)


if __name__ == "__main__":
    main()
