"""What one site puts on the wire and into InfluxDB, from one simulated tick: the inputs of
docs/scaling.md.

    .venv/bin/python benchmarks/size_site.py --preset shaoguan-tencent
    .venv/bin/python benchmarks/size_site.py --preset hengqin --scale 18

Simulates one tick of the preset (no servers needed) and prints per tick and per second of
real time: agent messages, device samples, bytes on the raw topic (JSON, before compression),
raw points and field values written to InfluxDB, and the raw bucket's series cardinality (one
series per measurement, tag set and field), plus the analytics results per minute. `--scale`
multiplies everything, for a hub of N such sites.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import orjson

from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shaoguan-tencent")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply by this many such sites")
    args = parser.parse_args()
    sim = ScenarioSimulator(build_scenario([args.preset], None, [], 7, datetime(2026, 11, 30, tzinfo=UTC)))
    site = sim.sites[0]
    ticks = next(iter(sim.run(site.dt)))
    messages = [m for tick in ticks for m in tick.messages]
    samples = [s for _, value in messages for s in orjson.loads(value)["samples"]]
    fields = sum(len(s["metrics"]) + 1 for s in samples)  # + the integer seq field
    racks = len({s["rack"] for s in samples if s.get("rack")})
    halls = len({s["hall"] for s in samples if s.get("hall")})
    per_s = args.scale / site.dt
    k = args.scale
    print(f"{args.preset} x {args.scale:g}: {racks * k:,.0f} racks, {halls * k:,.0f} halls, "
          f"sample interval {site.dt:g} s")
    rows = [
        ("agent messages", len(messages)),
        ("device samples (= raw points)", len(samples)),
        ("raw field values", fields),
        ("raw topic bytes (JSON, uncompressed)", sum(len(v) for _, v in messages)),
    ]
    print(f"{'':40} {'per tick':>16} {'per second':>16}")
    for name, value in rows:
        print(f"{name:40} {value * k:>16,.0f} {value * per_s:>16,.0f}")
    print(f"{'raw series (measurement x tags x field)':40} {fields * k:>16,.0f}")
    # Results per minute: utilisation per rack and hall and site, PUE x 3, pPUE per hall, efficiency.
    results = racks + halls + 1 + 3 + halls + 1
    print(f"{'analytics points per minute (1m)':40} {results * k:>16,.0f}")
    print(f"{'analytics series (rough: points x fields)':40} {results * 8 * k:>16,.0f}")


if __name__ == "__main__":
    main()
