"""`dcpulse alerts`: check a rules file, and run the rules over a recording offline."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
from rich.markup import escape
from rich.table import Table

from dcpulse.cliutil import console, load_settings
from dcpulse.streams.alertbook import AlertBook, Record, active_from_log
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
    """Alert rules and the alert log: check rules, run them over a recording, list what fires
    now and what happened."""


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


@alerts.command("alertmanager-config")
@RULES_OPTION
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="write it here (default: stdout)")
def alerts_alertmanager_config(rules_path: Path | None, output: Path | None) -> None:
    """The Alertmanager configuration dcpulse generates from the rules: grouping per site and
    cause, the receiver, and the inhibit rules the topology implies (what `services up` runs
    Alertmanager with; for an Alertmanager of your own)."""
    from dcpulse.services.alertmanager import render_config

    text = render_config(load_settings().alertmanager, inhibitions(_rules(rules_path or load_settings().alerts.rules_file)))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


@alerts.command("replay")
@click.argument("recording", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@RULES_OPTION
@click.option("--json", "as_json", is_flag=True, help="one JSON object per transition")
def alerts_replay(recording: Path, rules_path: Path | None, as_json: bool) -> None:
    """Run the rules over a recording, through the stream worker's own stages (one partition,
    its watermarks included, and the site combiner for site rules), and print every alert
    transition in event time, with what suppresses it (the alert book the sink keeps). The same
    recording always gives the same transitions."""
    from dcpulse.producers.recording import replay_plan
    from dcpulse.streams.offline import reference_alerts

    rules = _rules(rules_path)
    book = AlertBook(inhibitions(rules))
    count = 0
    for event in reference_alerts(replay_plan(recording, 1), 1, rules):
        for record in book.apply(event.to_json()):
            count += 1
            click.echo(orjson.dumps(record).decode() if as_json else _describe(record, book))
    if not as_json:
        click.echo(f"{count} transitions", err=True)


def _describe(record: Record, book: AlertBook) -> str:
    labels = record["labels"]
    where = "/".join(labels[k] for k in ("site", "hall", "rack", "device") if k in labels)
    flag = " (flapping)" if record["flapping"] else ""
    by = [next(iter(book.records[fp].values()))["labels"]["alertname"] for fp in record["inhibited_by"]
          if fp in book.records]
    inhibited = f" inhibited by {', '.join(by)}" if by else ""
    return (f"{record['at']}  {labels['alertname']:<32} {record['old']:>11} -> {record['new']:<11}{flag} {where} "
            f"value {record['value']:.4g}{inhibited}")


SINCE_OPTION = click.option("--since", default="7d", show_default=True, help="how far back (event time): 30m, 24h, 7d")


def _alert_log(since: str, site: str | None, rack: str | None, rule: str | None) -> list[dict]:
    """The alert log's records from InfluxDB (read-only token), oldest first; clear errors."""
    from datetime import UTC, datetime, timedelta

    from dcpulse.producers.run import parse_duration
    from dcpulse.services.onboarding import influx_token
    from dcpulse.sinks.query import alert_log_query, read_rows

    try:
        start = datetime.now(UTC) - timedelta(seconds=parse_duration(since))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = load_settings()
    query = alert_log_query(settings.influx.buckets.alerts, start, site, rack, rule)
    try:
        return read_rows(settings.influx.url, influx_token(settings, "read"), settings.influx.org, query)
    except Exception as exc:  # noqa: BLE001 - connection refused, auth, bad bucket: say which
        raise click.ClickException(f"cannot read the alert log from InfluxDB at {settings.influx.url}: "
                                   f"{type(exc).__name__}: {exc}") from None


def _where(row: dict) -> str:
    return "/".join(str(row[k]) for k in ("site", "hall", "rack", "device") if row.get(k))


@alerts.command("active")
@click.option("--site", help="only this site")
@click.option("--rack", help="only this rack")
@SINCE_OPTION
@click.option("--json", "as_json", is_flag=True, help="one JSON object per alert")
def alerts_active(site: str | None, rack: str | None, since: str, as_json: bool) -> None:
    """Alerts firing now (by the alert log's last record of each), worst first, with what
    suppresses them."""
    rules = inhibitions(_rules(load_settings().alerts.rules_file))
    active = active_from_log(_alert_log(since, site, rack, None), rules)
    if as_json:
        for r in active:
            click.echo(orjson.dumps({k: v for k, v in r.items() if not k.startswith("_")}
                                    | {"at": r["_time"].isoformat()},
                                    default=str).decode())
        return
    if not active:
        console.print(f"no alert firing (alert log of the last {since})")
        return
    table = Table()
    for column in ("severity", "alert", "where", "since", "value", "suppressed by", "summary"):
        table.add_column(column, no_wrap=column != "summary", overflow="fold")
    for r in active:
        by = ", ".join(r["suppressed_by"])
        table.add_row(escape(r.get("severity", "")), escape(r["alertname"]), escape(_where(r)),
                      r["_time"].strftime("%Y-%m-%d %H:%M:%S"), f"{r['value']:.4g}", escape(by),
                      escape(r.get("summary") or ""))
    console.print(table)


@alerts.command("history")
@click.option("--site", help="only this site")
@click.option("--rack", help="only this rack")
@click.option("--rule", help="only this rule (alertname)")
@SINCE_OPTION
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record")
def alerts_history(site: str | None, rack: str | None, rule: str | None, since: str, as_json: bool) -> None:
    """Every recorded transition of a site, a rack or a rule, oldest first."""
    rows = _alert_log(since, site, rack, rule)
    if as_json:
        for r in rows:
            click.echo(orjson.dumps({k: v for k, v in r.items() if not k.startswith("_")} | {"at": r["_time"].isoformat()},
                                    default=str).decode())
        return
    for r in rows:
        flag = " (flapping)" if r.get("flapping") else ""
        held = " suppressed" if r.get("inhibited_by") else ""
        click.echo(f"{r['_time']:%Y-%m-%d %H:%M:%S}  {r['alertname']:<32} {r['old']:>11} -> {r['state']:<11}"
                   f"{flag}{held} {_where(r)} value {r['value']:.4g}")
    click.echo(f"{len(rows)} records", err=True)
