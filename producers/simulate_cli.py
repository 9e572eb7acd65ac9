"""`dcpulse simulate` and `dcpulse presets`: run simulated centres into Kafka."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from rich.live import Live
from rich.table import Table

from dcpulse.cliutil import console, load_settings, say
from dcpulse.kafka_clients import access
from dcpulse.producers.replay_order import parse_speed
from dcpulse.producers.run import RunStats, parse_duration, run_scenario, truths
from dcpulse.producers.scenario_args import FAULT_SYNTAX, build_scenario, current_minute, resolve_start
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.producers.sitemodel import load_preset, preset_names


@click.command()
def presets() -> None:
    """List the site presets with their size, design IT load and public source."""
    table = Table("preset", "halls", "racks", "servers", "accelerators", "design IT kW", "PUE target")
    sources = []
    for name in preset_names():
        site = load_preset(name)
        c = site.counts()
        table.add_row(name, str(c["halls"]), f"{c['racks']:,}", f"{c['servers']:,}", f"{c['accelerators']:,}",
                      f"{c['design_it_kw']:,.0f}", f"{site.pue_target:.2f}")
        sources.append(f"[bold]{name}[/bold]: {site.source}")
    console.print(table)
    for line in sources:
        console.print(line, highlight=False)
    console.print("Assumptions behind each preset: producers/presets/<name>.toml", highlight=False)


def _status(stats: RunStats, sim: ScenarioSimulator, duration_s: float) -> Table:
    table = Table("site", "messages", "samples", "sim time", "truth PUE (energy ratio)", "IT kW now", "active faults",
                  title=f"{stats.messages:,} messages ({stats.samples:,} samples), {stats.rate:,.0f} msg/s, "
                        f"{stats.sample_rate:,.0f} samples/s, {stats.sim_s / max(stats.wall_s, 1e-9):,.1f}x real time, "
                        f"{stats.sim_s:,.0f}/{duration_s:,.0f} s simulated")
    for site in sim.sites:
        name, last = site.site.name, site.last
        table.add_row(name, f"{stats.per_site[name]:,}", f"{stats.per_site_samples[name]:,}", f"{stats.sim_s:,.0f} s",
                      f"{site.truth.pue:.3f}", f"{last.it_ups_out_w / 1000:,.0f}" if last else "-",
                      ", ".join(site.active_faults) or "-")
    return table


@click.command()
@click.option("--preset", "presets_", multiple=True, help=f"Site preset (repeat for several): {', '.join(preset_names())}")
@click.option("--scenario", "scenario_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML scenario file ([[sites]], [[faults]], seed, start)")
@click.option("--duration", default="5m", show_default=True, help="Simulated time to run: 30s, 5m, 1h")
@click.option("--speed", default="1", show_default=True, help="Times real time, or 'max'")
@click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's, 7)")
@click.option("--start", default=None,
              help="Simulated start (UTC), e.g. 2026-07-01T00:00:00Z, or 'now' (default unless the scenario "
                   "file sets one). Same start + seed + scenario = byte-identical stream.")
@click.option("--fault", "faults", multiple=True, help=FAULT_SYNTAX)
@click.option("--topic", default=None, help="Target topic (default: the telemetry topic from settings)")
def simulate(presets_: tuple[str, ...], scenario_file: Path | None, duration: str, speed: str, seed: int | None,
             start: str | None, faults: tuple[str, ...], topic: str | None) -> None:
    """Simulate computing centres and publish their telemetry to Kafka."""
    from dcpulse.producers.publisher import TelemetryPublisher

    settings = load_settings()
    try:
        duration_s = parse_duration(duration)
        pace = parse_speed(speed)
        scenario = build_scenario(list(presets_), scenario_file, list(faults), seed,
                                  resolve_start(start, scenario_file, current_minute()))
        sim = ScenarioSimulator(scenario)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    target = topic or settings.topics.telemetry
    say(f"simulating {', '.join(s.name for s in scenario.sites)} for {duration_s:,.0f} s "
        f"at {'max speed' if pace is None else f'{pace:g}x'}, seed {scenario.seed}, "
        f"start {scenario.start.isoformat().replace('+00:00', 'Z')}, into {target}")
    try:
        publisher = TelemetryPublisher(access(settings, "agent"), target)
        publisher.partitioner  # the topic's metadata now: a refusal shows here, not mid-run
    except TopicAuthorizationFailedError:
        raise click.ClickException(f"the agent role may not write {target}: agents may write only "
                                   f"{settings.topics.telemetry} (docs/security.md)") from None
    except KafkaError as exc:  # a missing login is the CLI's to report (MissingSecret)
        raise click.ClickException(f"cannot publish to {target}: {exc}") from None
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        stats = run_scenario(sim, duration_s, pace, publisher.publish_raw, publisher.broadcast,
                             on_progress=lambda st: live.update(_status(st, sim, duration_s)),
                             stop=lambda: bool(interrupted))
        live.update(_status(stats, sim, duration_s))
    say("flushing the producer")
    publisher.close()
    summary = Table("site", "messages", "samples", "facility kWh", "IT kWh (UPS out)", "truth PUE")
    for name, truth in truths(sim).items():
        summary.add_row(name, f"{stats.per_site[name]:,}", f"{stats.per_site_samples[name]:,}",
                        f"{truth.facility_kwh:,.1f}", f"{truth.it_kwh:,.1f}", f"{truth.pue:.3f}")
    console.print(summary)
    failed = sum(publisher.failures.values())
    console.print(f"stream sha256 {stats.digest} ({stats.messages:,} messages, {stats.samples:,} samples, "
                  f"{stats.watermarks:,} watermarks, {stats.bytes:,} bytes) in {stats.wall_s:.1f} s wall; "
                  f"Kafka records delivered {publisher.sent:,} of {publisher.published:,} (a watermark is one per "
                  f"partition); failed {failed:,}"
                  + (f" {dict(publisher.failures)}" if failed else ""), highlight=False, soft_wrap=True)
    if interrupted:
        say("interrupted: stopped early after flushing what was produced")
    if failed:
        sys.exit(1)
