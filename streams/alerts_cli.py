"""`dcpulse alerts`: check a rules file, and run the rules over a recording offline."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from rich.markup import escape
from rich.table import Table

from dcpulse.cliutil import console
from dcpulse.streams.alertbook import AlertBook, Record
from dcpulse.streams.alertrules import Rule, RulesError, inhibitions, load_rules

RULES_OPTION = click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="rules file (TOML); default: the built-in pack")


def _rules(path: Path | None) -> list[Rule]:
    try:
        return load_rules(path)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def alerts() -> None:
    """Alert rules: check them, and see what they raise on a recording."""


@alerts.command("rules")
@RULES_OPTION
def alerts_rules(rules_path: Path | None) -> None:
    """Validate a rules file and list its rules (exit code 1 with the rule and field at fault)."""
    table = Table()
    for column in ("rule", "input", "condition", "for", "keep firing", "severity"):
        table.add_column(column, no_wrap=column in ("rule", "input"))
    for r in _rules(rules_path):
        judged = f"{r.metric} / {r.divide_by}" if r.divide_by else r.metric
        clear = f" (clear {r.clear:g})" if r.clear is not None else ""
        table.add_row(escape(r.name), escape(f"{r.kind}.{judged}"), escape(f"{r.condition} {r.threshold:g}{clear}"),
                      f"{r.for_s:g} s", f"{r.keep_firing_for_s:g} s", r.severity)
    console.print(table)


@alerts.command("replay")
@click.argument("recording", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@RULES_OPTION
@click.option("--json", "as_json", is_flag=True, help="one JSON object per transition")
def alerts_replay(recording: Path, rules_path: Path | None, as_json: bool) -> None:
    """Run the rules over a recording, through the stream worker's own stages (one partition,
    its watermarks included, and the site combiner for site rules), and print every alert
    transition in event time, with what suppresses it (the alert book the sink keeps). The same
    recording always gives the same transitions."""
    from collections import Counter

    from dcpulse.producers.recording import replay_plan
    from dcpulse.producers.sitemodel import preset_thresholds
    from dcpulse.settings import AnalyticsSettings, ValidationSettings
    from dcpulse.streams.combine import SiteStage, decode_site_state
    from dcpulse.streams.stage import Outputs, PartitionStage, new_state
    from dcpulse.streams.state import PartitionState

    analytics, rules = AnalyticsSettings(), _rules(rules_path)
    stage = PartitionStage("replay", 0, 1, new_state(0, analytics.state_buckets), ValidationSettings(), analytics,
                           rules)
    sites = SiteStage(0, PartitionState(0, analytics.state_buckets, decode_site_state), analytics, rules,
                      preset_thresholds())
    book = AlertBook(inhibitions(rules))
    count, partials = 0, 0
    for offset, (_, timestamp_ms, key, value) in enumerate(replay_plan(recording, 1)):
        out = Outputs()
        stage.handle(out, offset, timestamp_ms, key, value)
        for partial in out.partials:
            sites.handle([], Counter(), partials, orjson.dumps(partial.to_json()), out.alerts)
            partials += 1
        for event in out.alerts:
            for record in book.apply(event.to_json()):
                count += 1
                if as_json:
                    click.echo(orjson.dumps(record).decode())
                else:
                    click.echo(_describe(record, book))
    if not as_json:
        click.echo(f"{count} transitions", err=True)


def _describe(record: Record, book: AlertBook) -> str:
    labels = record["labels"]
    where = "/".join(labels[k] for k in ("site", "hall", "rack", "device") if k in labels)
    flag = " (flapping)" if record["flapping"] else ""
    by = [book.active[fp]["labels"]["alertname"] for fp in record["inhibited_by"] if fp in book.active]
    inhibited = f" inhibited by {', '.join(by)}" if by else ""
    return (f"{record['at']}  {labels['alertname']:<32} {record['old']:>11} -> {record['new']:<11}{flag} {where} "
            f"value {record['value']:.4g}{inhibited}")
