"""`dcpulse alerts`: check a rules file, and run the rules over a recording offline."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from rich.markup import escape
from rich.table import Table

from dcpulse.cliutil import console
from dcpulse.streams.alertrules import Rule, RulesError, load_rules
from dcpulse.streams.validation import iso_ms

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
    """Run the rules over a recording, through the stream worker's own partition stage (one
    partition, its watermarks included), and print every alert transition in event time. The
    same recording always gives the same transitions."""
    from dcpulse.producers.recording import replay_plan
    from dcpulse.settings import AnalyticsSettings, ValidationSettings
    from dcpulse.streams.stage import Outputs, PartitionStage, new_state

    analytics = AnalyticsSettings()
    stage = PartitionStage("replay", 0, 1, new_state(0, analytics.state_buckets), ValidationSettings(), analytics,
                           _rules(rules_path))
    count = 0
    for offset, (_, timestamp_ms, key, value) in enumerate(replay_plan(recording, 1)):
        out = Outputs()
        stage.handle(out, offset, timestamp_ms, key, value)
        for event in out.alerts:
            count += 1
            t = event.transition
            if as_json:
                click.echo(orjson.dumps(event.to_json()).decode())
            else:
                where = "/".join(event.labels[k] for k in ("site", "hall", "rack", "device") if k in event.labels)
                flag = " (flapping)" if t.flapping else ""
                click.echo(f"{iso_ms(t.at_ms)}  {event.rule:<32} {t.old:>11} -> {t.new:<11}{flag} {where} "
                           f"value {event.value:.4g}")
    if not as_json:
        click.echo(f"{count} transitions", err=True)
