"""The `dcpulse` command line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import orjson
from rich.table import Table

from dcpulse.cliutil import console, load_settings, say
from dcpulse.private_files import MissingSecret
from dcpulse.settings import CONFIG_ENV_VAR, Settings, get_settings, masked_dump

class Commands(click.Group):
    """A missing login or token is the operator's to fix: one line saying how, no traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except MissingSecret as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Commands)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help=f"TOML settings file (same as {CONFIG_ENV_VAR}=FILE)")
def main(config_file: str | None) -> None:
    """dcpulse: telemetry pipeline for AI computing centres (Kafka -> Faust -> InfluxDB)."""
    if config_file:
        # Through the environment so child processes (streams, sink) see the same file.
        os.environ[CONFIG_ENV_VAR] = os.path.abspath(config_file)
        get_settings.cache_clear()


@main.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
def config_show() -> None:
    """Print the effective configuration (defaults < TOML file < DCPULSE_* env), secrets masked."""
    click.echo(orjson.dumps(masked_dump(load_settings()), option=orjson.OPT_INDENT_2).decode())


@main.group()
def services() -> None:
    """The local Kafka broker and InfluxDB server (127.0.0.1 only)."""


def _local_services():
    from dcpulse.services.manager import LocalServices

    return LocalServices(load_settings())


@services.command("up")
def services_up() -> None:
    """Provision if needed (the first influxd build takes ~7 min), start, wait healthy. Idempotent."""
    started = time.monotonic()
    try:
        _local_services().up(say)
    except RuntimeError as exc:
        console.print(f"[red]services up failed:[/red] {exc}", highlight=False)
        sys.exit(1)
    say(f"services up in {time.monotonic() - started:.1f}s")


@services.command("down")
def services_down() -> None:
    """Stop the servers (Kafka, InfluxDB, Alertmanager): SIGTERM, then SIGKILL after the grace period."""
    _local_services().down(say)


@services.command("status")
def services_status() -> None:
    """Versions, addresses, PIDs and health of the servers. Exit code 1 unless all are healthy."""
    rows = _local_services().status()
    table = Table("service", "version", "address", "pid", "health", "built/cached")
    for row in rows:
        table.add_row(row.name, row.version, row.address, str(row.pid or "-"),
                      "[green]healthy[/green]" if row.healthy else "[red]down[/red]",
                      "yes" if row.provisioned else "no")
    console.print(table)
    for row in rows:
        console.print(f"{row.name} log: {row.log_file}", highlight=False, soft_wrap=True)
    sys.exit(0 if all(row.healthy for row in rows) else 1)


@services.command("kafka-files")
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--service", default="kafka", show_default=True, help="The broker's name on the compose network")
def services_kafka_files(output: Path, service: str) -> None:
    """For docker/compose.yaml: the broker's CA, certificate, role logins, server.properties and
    format arguments in OUTPUT (0600; existing secrets kept)."""
    from dcpulse.services.compose_files import write_broker_files
    from dcpulse.services.kafka_security import BrokerSecrets

    write_broker_files(BrokerSecrets(output), load_settings().kafka, service)
    say(f"broker files in {output}")


@services.command("influx-tokens")
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--admin-token-file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def services_influx_tokens(output: Path, admin_token_file: Path) -> None:
    """For docker/compose.yaml: mint the write-only and read-only tokens of the dcpulse buckets
    into OUTPUT/write-token and read-token (0600; kept if there)."""
    from dcpulse.services.compose_files import write_influx_tokens

    write_influx_tokens(load_settings().influx, admin_token_file.read_text().strip(), output)
    say(f"tokens in {output}")


@services.command("logs")
@click.argument("name", required=False, type=click.Choice(["kafka", "influxdb", "alertmanager"]))
@click.option("-n", "--lines", default=40, show_default=True, help="Lines from the end of each log")
def services_logs(name: str | None, lines: int) -> None:
    """Show the end of each server's log (or of NAME's)."""
    for service, path in _local_services().log_files().items():
        if name and service != name:
            continue
        console.rule(f"{service}: {path}")
        if not path.exists():
            click.echo("(no log yet)")
            continue
        click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


@main.group()
def schema() -> None:
    """The event contract's JSON Schemas."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False), default="docs/schema")
def schema_export(directory: str) -> None:
    """Write telemetry-v1 and deadletter-v1 JSON Schemas into DIRECTORY."""

    from dcpulse.schemas import export

    for path in export(Path(directory)):
        say(f"wrote {path}")


@main.group()
def topics() -> None:
    """The project's Kafka topics (names, partitions, retention come from settings)."""


@topics.command("list")
def topics_list() -> None:
    """Show every topic dcpulse owns and what it carries."""
    from dcpulse.services.topics import topic_specs

    table = Table("topic", "partitions", "retention", "carries")
    for spec in topic_specs(load_settings().topics):
        table.add_row(spec.name, str(spec.partitions), f"{spec.retention_ms // 3_600_000} h", spec.purpose)
    console.print(table)


@topics.command("create")
def topics_create() -> None:
    """Create the missing topics and the roles' ACLs on the configured cluster (`services up`
    does this too)."""
    from dcpulse.services.topics import provision_pipeline

    created = provision_pipeline(load_settings())
    say(f"created: {', '.join(created)}" if created else "all topics already exist")


@main.command()
def streams() -> None:
    """Run the Faust stream processors (validation) until interrupted."""
    from dcpulse.streams.app import run_worker

    run_worker(load_settings())


@main.command()
def sink() -> None:
    """Run the InfluxDB sinks (valid telemetry -> raw bucket, results -> analytics) until interrupted."""
    from dcpulse.services.onboarding import influx_token
    from dcpulse.sinks.influx import InfluxWriter
    from dcpulse.sinks.runner import build_notifier, build_sinks, run_sinks

    settings = load_settings()
    token = influx_token(settings, "write")
    notifier = build_notifier(settings)
    run_sinks(build_sinks(settings, lambda: InfluxWriter(settings.influx.url, token, settings.influx.org), notifier),
              notifier)


@main.command()
@click.option("--minutes", default=8, show_default=True, help="Simulated minutes of the small preset")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the results")
def demo(minutes: int, timeout: float) -> None:
    """Start the servers, run the small site through the whole pipeline (a CDU pump fails near
    the end), print PUE, utilisation and the alerts."""
    from dcpulse.demo import run_small_site
    from dcpulse.services.manager import LocalServices

    settings = load_settings()
    try:
        LocalServices(settings).up(say)
        say("starting the Faust worker and the InfluxDB sinks; simulating the small preset")
        result = run_small_site(settings, minutes, say, timeout)
    except Exception as exc:  # noqa: BLE001 - the user gets one clear line, not a traceback
        console.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(1)
    table = Table("window start (UTC)", "PUE cat 1 (UPS out)", "PUE cat 2 (PDU out)", "PUE cat 3 (server in)",
                  "coverage", "quality", title=f"PUE per minute, site {result['site']}, read back from InfluxDB")
    by_time: dict = {}
    for row in result["pue"]:
        by_time.setdefault(row["_time"], {})[row["category"]] = row
    for t, cats in sorted(by_time.items()):
        cells = [f"{cats[c]['pue']:.3f}" if c in cats and cats[c].get("pue") is not None else "-" for c in "123"]
        worst = min(cats.values(), key=lambda r: r["coverage"])
        table.add_row(f"{t:%H:%M}", *cells, f"{worst['coverage']:.2f}", worst["quality"])
    console.print(table)
    last = max(r["_time"] for r in result["utilisation"])
    util = Table("level", "entity", "acc util mean", "p95", "max", "power / provisioned", "heat / CDU capacity",
                 title=f"Utilisation, minute starting {last:%H:%M} UTC")
    for row in (r for r in result["utilisation"] if r["_time"] == last):
        util.add_row(row["level"], row["entity"], *(f"{row[k]:.2f}" if row.get(k) is not None else "-" for k in
                     ("acc_util_mean", "acc_util_p95", "acc_util_max", "power_ratio", "heat_ratio")))
    console.print(util)
    _print_demo_alerts(result, settings)
    say(f"simulator ground truth over the run: PUE {result['truth_pue']:.3f} (category 1); "
        f"{result['samples']:,} samples. Servers left running: `dcpulse services down` stops them")
    say(f"to look at it in the browser: `./run console`, then open http://{settings.console.host}:"
        f"{settings.console.port}/ (the site's floor: /site/{result['site']}; alerts: /alerts)")


def _print_demo_alerts(result: dict, settings: Settings) -> None:
    """The alert log of the demo's site, one line per alert and state, and what Alertmanager holds."""
    from collections import Counter

    latest: dict[str, dict] = {}
    for row in result["alerts"]:
        latest[row["fingerprint"]] = row
    counts = Counter((r["alertname"], r["state"], bool(r.get("inhibited_by"))) for r in latest.values())
    table = Table("alert", "state", "alerts", "suppressed", title=f"Alerts of site {result['site']} (a CDU pump was "
                  "failed 2 minutes before the end), from the alert log")
    for (name, state, held), n in sorted(counts.items()):
        table.add_row(name, state, str(n), "yes" if held else "")
    console.print(table)
    posted = result["alertmanager"]
    if posted is None:
        say("Alertmanager: not reachable or disabled; the alert log above is complete without it")
    else:
        states = Counter(a["status"]["state"] for a in posted)
        say(f"Alertmanager at {settings.alertmanager.url}: {states.get('active', 0)} active, "
            f"{states.get('suppressed', 0)} suppressed by topology inhibition; "
            f"`dcpulse alerts active --site {result['site']}` lists them")


from dcpulse.producers.recording_cli import record, replay  # noqa: E402
main.add_command(record)
main.add_command(replay)
from dcpulse.producers.simulate_cli import presets, simulate  # noqa: E402

main.add_command(simulate)
main.add_command(presets)
from dcpulse.streams.alerts_cli import alerts  # noqa: E402

main.add_command(alerts)
from dcpulse.views.console_cli import console as console_command  # noqa: E402

main.add_command(console_command)
from dcpulse.views.query_cli import query  # noqa: E402
from dcpulse.views.report_cli import report  # noqa: E402

main.add_command(query)
main.add_command(report)

if __name__ == "__main__":
    main()
