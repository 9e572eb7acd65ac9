"""`dcpulse query`: the canned questions of views/queries.py (and raw Flux) as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.markup import escape
from rich.table import Table

from dcpulse.cliutil import console, load_settings
from dcpulse.views import queries
from dcpulse.views.queries import QueryError, Rows, Source, Span

SINCE_HELP = "range start: a duration back from now (30m, 24h, 7d) or a time (2026-07-01T00:00:00Z)"


def range_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--site, --since, --until: what every question about a site takes (`dcpulse report` too)."""
    func = click.option("--until", default="now", show_default=True, help="range end: like --since, or now")(func)
    func = click.option("--since", default="24h", show_default=True, help=SINCE_HELP)(func)
    return click.option("--site", required=True, help="site name (as in the telemetry, e.g. small)")(func)


FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
                             show_default=True, help="output format")
WINDOW_OPTION = click.option("--window", type=click.Choice(queries.WINDOWS), default="1h", show_default=True,
                             help="which stored window results to read")


@contextmanager
def answering() -> Iterator[None]:
    """A question that cannot be answered exits with code 1 and one line, never a traceback."""
    try:
        yield
    except QueryError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None


def open_site(site: str, since: str, until: str) -> tuple[Source, Span]:
    """The read-only source and the range, once the site is known to have results in it."""
    source = Source.from_settings(load_settings())
    span = queries.parse_span(since, until, datetime.now(UTC))
    queries.check_site(source, site, span)
    return source, span


# ---- output -------------------------------------------------------------------------------------


def columns(rows: Rows) -> list[str]:
    """Every key of the rows, in order of first appearance (raw Flux rows differ in their keys)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def table_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def render_table(rows: Rows, title: str, hide: tuple[str, ...] = ()) -> Table:
    keys = [key for key in columns(rows) if key not in hide]
    table = Table(title=escape(title))
    for key in keys:
        table.add_column(escape(key), overflow="fold")
    for row in rows:
        table.add_row(*(escape(table_cell(row.get(key))) for key in keys))
    return table


def render_csv(rows: Rows) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v.isoformat() if isinstance(v, datetime) else ("" if v is None else v)
                         for k, v in row.items()})
    return out.getvalue()


def render_json(rows: Rows) -> str:
    return orjson.dumps(rows, option=orjson.OPT_UTC_Z, default=str).decode()


def emit(rows: Rows, fmt: str, title: str, empty: str, empty_is_error: bool = True, hide: tuple[str, ...] = ()) -> None:
    """Print the answer; no rows is an error (an empty range) unless it is an answer too. `hide`:
    columns for machines that the table leaves out."""
    if not rows and empty_is_error:
        raise QueryError(empty)
    if fmt == "json":
        click.echo(render_json(rows))
    elif not rows:
        click.echo(empty, err=True)
    elif fmt == "csv":
        click.echo(render_csv(rows), nl=False)
    else:
        console.print(render_table(rows, title, hide))


# ---- the questions ------------------------------------------------------------------------------


@click.group()
def query() -> None:
    """Canned questions for SREs (read-only token): PUE, energy split, hottest racks,
    utilisation, racks near provisioned power, coolant, alert history; and raw Flux.
    Exit code 1 with one line when a question cannot be answered (docs/query-and-report.md)."""


@query.command("pue")
@range_options
@WINDOW_OPTION
@FORMAT_OPTION
def query_pue(site: str, since: str, until: str, window: str, fmt: str) -> None:
    """PUE by category (1 UPS output, 2 PDU outputs, 3 server inputs) per window, with the
    window's facility and IT energy, coverage and quality."""
    with answering():
        source, span = open_site(site, since, until)
        hint = "" if window == "1m" else " (shorter runs have only 1m windows: --window 1m)"
        emit(queries.pue(source, site, span, window), fmt, f"PUE per {window} window, site {site}, {span}",
             f"no {window} PUE windows of site {site} from {span}{hint}")


@query.command("energy")
@range_options
@FORMAT_OPTION
def query_energy(site: str, since: str, until: str, fmt: str) -> None:
    """Where the energy went over the range: IT, distribution losses, cooling, other (kWh and
    share of the facility's), from the meters' energy registers in the raw bucket."""
    with answering():
        source, span = open_site(site, since, until)
        emit(queries.energy(source, site, span), fmt, f"Energy split, site {site}, {span}",
             f"no energy registers of site {site} in bucket {source.buckets.raw} from {span}")


@query.command("hottest-racks")
@range_options
@click.option("--by", "sensor", type=click.Choice(["inlet", "accelerator"]), default="inlet", show_default=True,
              help="server inlet air, or any accelerator's temperature")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="how many racks")
@FORMAT_OPTION
def query_hottest_racks(site: str, since: str, until: str, sensor: str, top: int, fmt: str) -> None:
    """Racks by the hottest reading of their servers (raw samples), hottest first, with the
    device and time of that reading."""
    with answering():
        source, span = open_site(site, since, until)
        emit(queries.hottest_racks(source, site, span, sensor, top), fmt,
             f"Hottest racks by {sensor} temperature, site {site}, {span}",
             f"no server {sensor} temperatures of site {site} in bucket {source.buckets.raw} from {span}")


@query.command("utilisation")
@range_options
@click.option("--level", type=click.Choice(["rack", "hall"]), default="rack", show_default=True)
@FORMAT_OPTION
def query_utilisation(site: str, since: str, until: str, level: str, fmt: str) -> None:
    """Accelerator utilisation per rack or hall over the range: mean (by samples), p50 and p95
    of the minute means, the largest sample, and mean CPU utilisation (1m results only)."""
    with answering():
        source, span = open_site(site, since, until)
        emit(queries.utilisation(source, site, span, level), fmt,
             f"Accelerator utilisation per {level}, site {site}, {span}",
             f"no {level} utilisation results of site {site} from {span}")


@query.command("near-provisioned")
@range_options
@click.option("--above", type=click.FloatRange(min=0), default=0.9, show_default=True,
              help="power / provisioned ratio")
@FORMAT_OPTION
def query_near_provisioned(site: str, since: str, until: str, above: float, fmt: str) -> None:
    """Racks whose minute mean PDU power exceeded ABOVE x their provisioned power: how many
    minutes, the peak and when. No rack is an answer, not an error."""
    with answering():
        source, span = open_site(site, since, until)
        emit(queries.near_provisioned(source, site, span, above), fmt,
             f"Racks above {above:g} of provisioned power, site {site}, {span}",
             f"no rack of site {site} exceeded {above:g} of its provisioned power from {span}", empty_is_error=False)


def _every(ctx: click.Context, param: click.Parameter, text: str) -> float:
    from dcpulse.producers.run import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if 0 < seconds < 1:
        raise click.BadParameter("use 0 (every sample) or at least 1s")
    return seconds


@query.command("coolant")
@range_options
@click.option("--cdu", required=True, help="CDU id, e.g. cdu-h1-01")
@click.option("--every", default="1m", show_default=True, callback=_every,
              help="mean over buckets of this length (0: every sample)")
@FORMAT_OPTION
def query_coolant(site: str, since: str, until: str, cdu: str, every: float, fmt: str) -> None:
    """A CDU's supply and return temperatures, their difference and flow over time (raw samples)."""
    with answering():
        source, span = open_site(site, since, until)
        known = queries.cdus(source, site, span)
        if cdu not in known:
            raise QueryError(f"no CDU {cdu!r} at site {site} from {span}; CDUs with samples: "
                             f"{', '.join(known) or 'none'}")
        emit(queries.coolant(source, site, span, every, cdu), fmt, f"Coolant of {cdu}, site {site}, {span}",
             f"no samples of {cdu} from {span}")


@query.command("alerts")
@range_options
@click.option("--rack", help="only this rack")
@click.option("--rule", help="only this rule (alertname)")
@FORMAT_OPTION
def query_alerts(site: str, since: str, until: str, rack: str | None, rule: str | None, fmt: str) -> None:
    """Alert history: every transition in the alert log, oldest first, and whether it was
    suppressed by a root cause. No record is an answer, not an error."""
    with answering():
        source, span = open_site(site, since, until)
        emit(queries.alerts(source, site, span, rack, rule), fmt, f"Alert history, site {site}, {span}",
             f"no alert records of site {site} from {span}", empty_is_error=False, hide=("fingerprint",))


@query.command("flux")
@click.argument("text", metavar="QUERY")
@FORMAT_OPTION
def query_flux(text: str, fmt: str) -> None:
    """Run any Flux query with the read-only token; one row per record (tags and fields)."""
    with answering():
        source = Source.from_settings(load_settings())
        emit(queries.flux(source, text), fmt, "Flux", "the query returned no rows", empty_is_error=False)
