"""`dcpulse record` and `dcpulse replay`: capture topics to a file and republish them.

Kafka work lives in dcpulse.producers.recording; this module only parses options, shows
progress with rich and prints the summary. The broker address comes from settings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dcpulse.cliutil import console, load_settings
from dcpulse.kafka_clients import access


class _RateColumn(ProgressColumn):
    """Records per second over rich's recent-speed window (not the whole run's average)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0.0:,.0f} records/s", style="cyan")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, float], None]]:
    """A live line "label  N records  R records/s  elapsed"; yields the progress callback."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  TextColumn("[bold]{task.completed:,.0f}[/bold] records"), _RateColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(count: int, _elapsed: float) -> None:
            bar.update(task, completed=count)

        yield update


def _per_topic_table(title: str, counts: Mapping[str, int], failed: Mapping[str, int] | None = None) -> Table:
    table = Table("topic", "records", *(["failed"] if failed is not None else []), title=title)
    for topic in sorted(set(counts) | set(failed or {})):
        row = [topic, f"{counts.get(topic, 0):,}"]
        if failed is not None:
            row.append(f"{failed.get(topic, 0):,}")
        table.add_row(*row)
    return table


def _fail(message: str) -> None:
    console.print(f"[red]{message}[/red]", highlight=False, soft_wrap=True)
    sys.exit(1)


@click.command()
@click.option("--topic", "topics", multiple=True, required=True, help="Topic to record (repeatable)")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Recording file to write (gzip JSON lines, dcpulse.recording/1)")
@click.option("--from-beginning/--from-end", default=True, show_default=True,
              help="Start at the oldest retained record, or only record what arrives from now")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Stop after this many seconds without a new record (0: never)")
@click.option("--max-records", type=click.IntRange(min=1), default=None,
              help="Stop after this many records")
def record(topics: tuple[str, ...], output: Path, from_beginning: bool, duration: float | None,
           idle_timeout: float, max_records: int | None) -> None:
    """Record Kafka topics to a file (all partitions, no consumer group). Ctrl-C stops cleanly."""
    from dcpulse.producers.recording import record as record_topics

    settings = load_settings()
    try:
        with _progress(f"recording {', '.join(topics)}") as progress:
            stats = record_topics(
                access(settings, "admin"), list(topics), output, from_beginning=from_beginning,
                duration_s=duration, idle_timeout_s=idle_timeout or None,
                max_records=max_records, progress=progress)
    except (ValueError, OSError) as exc:
        _fail(f"record failed: {exc}")
    except Exception as exc:  # noqa: BLE001 - Kafka errors: one clear line, not a traceback
        _fail(f"record failed: {type(exc).__name__}: {exc}")
    console.print(_per_topic_table("recorded", stats.per_topic))
    console.print(
        f"{stats.records:,} records in {stats.duration_s:.1f}s, stopped by {stats.stopped_by}; "
        f"{stats.file_bytes:,} bytes written to {stats.path}", highlight=False, soft_wrap=True)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--speed", required=True, metavar="1|10|max",
              help="Replay speed: N times the recorded pace, or max (as fast as possible)")
@click.option("--shift-to-now", is_flag=True,
              help="Stamp the first record with the current time; later ones keep their gaps")
@click.option("--topic-map", "topic_map", multiple=True, metavar="SRC=DST",
              help="Send records of SRC to DST instead (repeatable)")
def replay(file: Path, speed: str, shift_to_now: bool, topic_map: tuple[str, ...]) -> None:
    """Republish a recording: keys, values, headers and timestamps, partitions merged by time,
    watermarks broadcast to every partition, v1 telemetry converted to v2 batches."""
    from dcpulse.producers.recording import parse_topic_map
    from dcpulse.producers.recording import replay as replay_file
    from dcpulse.producers.replay_order import parse_speed

    try:
        factor = parse_speed(speed)
        mapping = parse_topic_map(topic_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = load_settings()
    label = f"replaying {file.name} at {'max speed' if factor is None else f'{factor:g}x'}"
    try:
        with _progress(label) as progress:
            stats = replay_file(access(settings, "admin"), file, speed=factor, topic_map=mapping,
                                shift_to_now=shift_to_now, progress=progress)
    except (ValueError, OSError) as exc:
        _fail(f"replay failed: {exc}")
    except Exception as exc:  # noqa: BLE001 - Kafka errors: one clear line, not a traceback
        _fail(f"replay failed: {type(exc).__name__}: {exc}")
    console.print(_per_topic_table("delivered", stats.per_topic, stats.failed_per_topic))
    errors = ", ".join(f"{name} x{count}" for name, count in stats.errors.most_common()) or "none"
    console.print(
        f"{stats.delivered:,} of {stats.submitted:,} records delivered in {stats.duration_s:.1f}s "
        f"({stats.total:,} in the file; {stats.converted:,} v1 records converted; {stats.watermarks:,} watermarks "
        f"broadcast to every partition); errors: {errors}"
        + ("; [yellow]interrupted[/yellow]" if stats.interrupted else ""), highlight=False, soft_wrap=True)
    if stats.interrupted:
        sys.exit(130)
    if stats.failed:
        sys.exit(1)
