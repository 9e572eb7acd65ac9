"""Alert detection latency at 1x: event time of the sample that fires an alert -> Alertmanager.

    .venv/bin/python benchmarks/bench_alert_latency.py                 # small, 300 s at 1x
    .venv/bin/python benchmarks/bench_alert_latency.py --seconds 600

The whole pipeline runs in a sandbox (own topics and buckets on the local servers, and its own
`pipeline` label in the shared Alertmanager): the simulator publishes the small site at real
time with agent clocks on the wall clock, with a CDU pump failure, a coolant leak, a counter
reset and a hot spot injected; one stream worker evaluates the rules, the sink's alert log and
notifier post to Alertmanager. Every 0.2 s the benchmark lists Alertmanager's alerts of this
pipeline; an alert's latency is the wall time it was first listed minus the event time of the
sample that fired it (the `event_time` annotation dcpulse sends). For rules without a `for`
(a leak, a lost pump, an accelerator at its slowdown limit, a register going back) that sample
is the first faulty one; rules with a `for` fire that much event time later, by design, so the
figure is the pipeline's share either way. The polling adds up to 0.2 s.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from datetime import UTC, datetime

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.sandbox import sandbox
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.alertmanager import AlertmanagerClient
from dcpulse.streams.alertrules import load_rules

FAULTS = ["cdu_pump_failure:small:cdu-h1-01@60s+90s", "coolant_leak:small:cdu-h1-02@120s+60s",
          "counter_reset:small@150s", "hot_spot:small:h1-r02-k02@180s+90s"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(base: Settings, admin_token: str, seconds: float) -> tuple[dict[str, float], dict[str, str]]:
    """AM fingerprint -> latency in s, and -> alertname."""
    first_seen: dict[str, float] = {}
    latency: dict[str, float] = {}
    names: dict[str, str] = {}
    with sandbox(base, admin_token, "bench-alert-latency") as settings, \
            running_pipeline(settings) as pipeline, AlertmanagerClient(settings.alertmanager.url) as am:
        start = datetime.now(UTC)  # agent clocks on the wall clock: event time = publish time
        sim = ScenarioSimulator(build_scenario(["small"], None, FAULTS, 7, start))
        publisher = TelemetryPublisher(access(settings, "agent"), settings.topics.telemetry)
        thread = threading.Thread(target=run_scenario,
                                  args=(sim, seconds, 1.0, publisher.publish_raw, publisher.broadcast))
        thread.start()
        matcher = f'pipeline="{settings.topics.prefix}"'
        next_report = time.monotonic() + 30
        while thread.is_alive() or time.monotonic() < next_report - 20:
            pipeline.check_alive()
            now = time.time()
            for alert in am.alerts(filter=[matcher]):
                fp = alert["fingerprint"]
                if fp not in first_seen:
                    first_seen[fp] = now
                    fired = datetime.fromisoformat(alert["annotations"]["event_time"]).timestamp()
                    latency[fp], names[fp] = now - fired, alert["labels"]["alertname"]
            if time.monotonic() >= next_report:
                next_report += 30
                print(f"  {len(latency)} alerts seen so far", flush=True)
            time.sleep(0.2)
        thread.join()
        publisher.close()
    return latency, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="wall seconds of simulation at 1x")
    args = parser.parse_args()
    services = LocalServices(Settings())
    services.up(lambda m: print(f"[services] {m}"))
    latency, names = measure(Settings(), services.credentials().admin_token, args.seconds)
    if not latency:
        raise SystemExit("no alert reached Alertmanager")
    immediate = {rule.name for rule in load_rules() if rule.for_s == 0}
    print(f"alerts by rule: {dict(Counter(names.values()))}")
    for label, chosen in (("rules without `for` (first faulty sample -> Alertmanager)",
                           [v for fp, v in latency.items() if names[fp] in immediate]),
                          ("all rules (firing sample -> Alertmanager)", list(latency.values()))):
        if chosen:
            print(f"{label}: n={len(chosen)} p50={percentile(chosen, 50):.2f} s p99={percentile(chosen, 99):.2f} s "
                  f"max={max(chosen):.2f} s")


if __name__ == "__main__":
    main()
