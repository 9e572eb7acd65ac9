"""What the alert rules cost the partition stage, per sample, without Kafka.

    .venv/bin/python benchmarks/bench_alerts.py                 # hengqin, 60 simulated s, default pack
    .venv/bin/python benchmarks/bench_alerts.py --seconds 120 --fault cdu_pump_failure:hengqin@30s+60s

The simulator (seed 7, fixed start) gives a preset's records as the producers would send them to
12 partitions (in memory). Then, on the same records, each partition's stage runs twice, one
after the other: without alert rules, and with the rules (default: the built-in pack). Both
runs are timed with the process's CPU clock; printed: samples, CPU seconds of each, the
difference per sample in microseconds, the ratio, and how many alert transitions the rules
gave. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from dcpulse.producers.publisher import InMemoryTopic
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.alertrules import Rule, load_rules
from dcpulse.streams.offline import partition_outputs
from dcpulse.streams.stage import Outputs

PARTITIONS = 12


def run_stages(records: list, rules: list[Rule]) -> tuple[float, Outputs]:
    """CPU seconds of every partition's stage over the records, and what they output."""
    started = time.process_time()
    out = partition_outputs(records, PARTITIONS, AnalyticsSettings(), ValidationSettings(), rules)
    return time.process_time() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hengqin")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--fault", action="append", default=[], help="as `dcpulse simulate --fault`")
    parser.add_argument("--rules", type=Path, help="rules file (default: the built-in pack)")
    args = parser.parse_args()
    rules = load_rules(args.rules)
    topic = InMemoryTopic(PARTITIONS)
    sim = ScenarioSimulator(build_scenario([args.preset], None, args.fault, 7, datetime(2026, 7, 1, tzinfo=UTC)))
    stats = run_scenario(sim, args.seconds, None, topic.publish_raw, topic.broadcast)
    base_s, base = run_stages(topic.records, [])
    with_s, with_rules = run_stages(topic.records, rules)
    n = base.counts["samples_valid"]
    print(f"{args.preset}, {args.seconds:g} simulated s, faults {args.fault or 'none'}: {stats.samples:,} samples "
          f"({n:,} accepted) in {stats.messages:,} batches over {PARTITIONS} partitions")
    print(f"stage without rules: {base_s:.2f} CPU s = {base_s / n * 1e6:.1f} µs per sample")
    print(f"stage with {len(rules)} rules: {with_s:.2f} CPU s = {with_s / n * 1e6:.1f} µs per sample; "
          f"{len(with_rules.alerts):,} alert transitions")
    print(f"rules cost {(with_s - base_s) / n * 1e6:.1f} µs per sample; with / without: {with_s / base_s:.2f}")


if __name__ == "__main__":
    main()
