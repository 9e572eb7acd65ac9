"""`dcpulse report`: the HTML report with figures of a site over a range (views/report.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from dcpulse.views.query_cli import answering, open_site, range_options


@click.command()
@range_options
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="directory to write into (default: ./dcpulse-report-<site>-<UTC time>)")
def report(site: str, since: str, until: str, output: Path | None) -> None:
    """One self-contained HTML file (figures inline, no external resource) and the PNG figures
    beside it: PUE per category against the site's target, energy split, pPUE per hall, rack
    utilisation heat map, power against provisioned, coolant temperatures per CDU, alert timeline."""
    from dcpulse.views.report import write_report  # matplotlib: only when a report is asked for

    with answering():
        source, span = open_site(site, since, until)
        out = output or Path(f"dcpulse-report-{site}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        written = write_report(source, site, span, out)
    click.echo(f"wrote {written.html}")
    click.echo(f"figures beside it: {', '.join(p.name for p in written.pngs)}")
