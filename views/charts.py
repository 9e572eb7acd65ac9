"""The report's figures: rows from views/queries.py in, a matplotlib Figure out (Agg canvas, no
pyplot state). Each figure keeps the data it was drawn from in its artists (lines, images, bars),
which is what the report's tests read back."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dcpulse.views.queries import Rows, Span

CATEGORIES = {"1": "category 1: IT at UPS output", "2": "category 2: IT at PDU outputs",
              "3": "category 3: IT at server inputs"}
SEVERITY_COLOURS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2e86c1"}
FIRING = ("firing", "keep_firing")
MOST = 40  # racks or CDUs one figure can show legibly
MINUTE = timedelta(minutes=1)  # the only window utilisation results have


def _figure(title: str, height: float = 4.0) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(10, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    return figure, figure.add_subplot()


def _time_axis(ax: Axes) -> None:
    locator = AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def _most(keys: list[str], score: Callable[[str], float], limit: int = MOST) -> list[str]:
    """The `limit` keys with the highest score, in key order."""
    return sorted(sorted(keys, key=lambda k: -score(k))[:limit])


def pue_chart(rows: Rows, window: str | None, target: float | None) -> Figure:
    """PUE per category over time, one line each, and the site's target as a dashed line."""
    figure, ax = _figure(f"PUE per {window} window" if window else "PUE")
    drawn = [r for r in rows if r["window"] == window and r["pue"] is not None]
    if not drawn:
        _no_data(ax, "no PUE results in this range")
        return figure
    for category, label in CATEGORIES.items():
        points = [r for r in drawn if r["category"] == category]
        if points:
            ax.plot([r["time"] for r in points], [r["pue"] for r in points], marker=".", label=label)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_ylabel("PUE (facility energy / IT energy)")
    ax.legend(loc="best", fontsize="small")
    _time_axis(ax)
    return figure


def energy_chart(rows: Rows, note: str = "") -> Figure:
    """The split of the facility's energy as horizontal bars, labelled in kWh and percent."""
    figure, ax = _figure("Where the energy went", height=3.2)
    parts = [r for r in rows if r["part"] != "facility"]
    if not parts:
        _no_data(ax, note or "no energy registers in this range")
        return figure
    names = [r["part"].replace("_", " ") for r in parts]
    bars = ax.barh(names, [r["kwh"] for r in parts], color=["#2e86c1", "#e67e22", "#17a589", "#95a5a6"])
    ax.bar_label(bars, labels=[f"{r['kwh']:,.1f} kWh ({r['share']:.1%})" if r["share"] is not None
                               else f"{r['kwh']:,.1f} kWh" for r in parts], padding=3, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("energy (kWh)")
    ax.margins(x=0.25)
    return figure


def ppue_chart(rows: Rows, window: str | None) -> Figure:
    """pPUE of each hall over time."""
    figure, ax = _figure(f"pPUE per hall, {window} windows" if window else "pPUE per hall")
    drawn = [r for r in rows if r["window"] == window and r["ppue"] is not None]
    if not drawn:
        _no_data(ax, "no pPUE results in this range")
        return figure
    for hall in sorted({r["hall"] for r in drawn}):
        points = [r for r in drawn if r["hall"] == hall]
        ax.plot([r["time"] for r in points], [r["ppue"] for r in points], marker=".", label=f"hall {hall}")
    ax.set_ylabel("pPUE (hall energy / hall IT energy)")
    ax.legend(loc="best", fontsize="small")
    _time_axis(ax)
    return figure


def _by(rows: Rows, key: str) -> dict[str, Rows]:
    groups: dict[str, Rows] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def utilisation_heatmap(windows: Rows) -> Figure:
    """Racks (rows) x minutes (columns), coloured by mean accelerator utilisation in percent;
    blank where a rack has no result. At most MOST racks: the busiest."""
    racks = _by([w for w in windows if w.get("acc_util_mean") is not None], "entity")
    figure, ax = _figure("Accelerator utilisation per rack and minute",
                         height=max(3.0, 1.5 + 0.22 * min(len(racks), MOST)))
    if not racks:
        _no_data(ax, "no rack utilisation results in this range")
        return figure
    shown = _most(list(racks), lambda k: sum(r["acc_util_mean"] for r in racks[k]) / len(racks[k]))
    first = min(r["time"] for k in shown for r in racks[k])
    minutes = 1 + max((r["time"] - first) // MINUTE for k in shown for r in racks[k])
    grid = [[math.nan] * minutes for _ in shown]  # one column per minute, also where no rack has one
    for i, rack in enumerate(shown):
        for r in racks[rack]:
            grid[i][(r["time"] - first) // MINUTE] = r["acc_util_mean"] * 100
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=100,
                      extent=(date2num(first), date2num(first + minutes * MINUTE), len(shown) - 0.5, -0.5))
    ax.set_yticks(range(len(shown)), shown, fontsize="small")
    ax.set_ylabel("rack")
    ax.xaxis_date(tz=UTC)
    _time_axis(ax)
    figure.colorbar(image, ax=ax, label="mean accelerator utilisation (%)")
    return figure


def power_chart(windows: Rows) -> Figure:
    """Per rack: mean and peak minute PDU power as bars, provisioned power as a black mark.
    At most MOST racks: those closest to their provisioned power."""
    racks = _by([w for w in windows if w.get("power_kw") is not None], "entity")
    figure, ax = _figure("Rack power against provisioned power", height=4.5)
    if not racks:
        _no_data(ax, "no rack power results in this range")
        return figure
    peak = {k: max(r["power_kw"] for r in rows) for k, rows in racks.items()}
    provisioned = {k: max((r.get("provisioned_kw") or 0.0) for r in rows) for k, rows in racks.items()}
    shown = _most(list(racks), lambda k: peak[k] / provisioned[k] if provisioned[k] else 0.0)
    mean = [sum(r["power_kw"] for r in racks[k]) / len(racks[k]) for k in shown]
    x = range(len(shown))
    ax.bar([i - 0.2 for i in x], mean, width=0.4, label="mean power (kW)", color="#2e86c1")
    ax.bar([i + 0.2 for i in x], [peak[k] for k in shown], width=0.4, label="peak minute (kW)", color="#e67e22")
    ax.scatter(list(x), [provisioned[k] for k in shown], marker="_", s=400, color="black", zorder=3,
               label="provisioned (kW)")
    ax.set_xticks(list(x), shown, rotation=90 if len(shown) > 8 else 0, fontsize="small")
    ax.set_ylabel("power (kW)")
    ax.set_xlabel("rack")
    ax.legend(loc="best", fontsize="small")
    return figure


def coolant_chart(rows: Rows) -> Figure:
    """Supply (solid) and return (dashed) coolant temperature of each CDU, one colour per CDU.
    At most MOST CDUs: those with the warmest return."""
    units = _by([r for r in rows if r.get("supply_c") is not None or r.get("return_c") is not None], "cdu")
    figure, ax = _figure("Coolant temperatures per CDU")
    if not units:
        _no_data(ax, "no CDU samples in this range (an air-cooled site has none)")
        return figure
    shown = _most(list(units), lambda k: max((r.get("return_c") or -math.inf) for r in units[k]))
    for i, cdu in enumerate(shown):
        colour = f"C{i % 10}"
        times = [r["time"] for r in units[cdu]]
        ax.plot(times, [r.get("supply_c") for r in units[cdu]], color=colour, label=f"{cdu} supply")
        ax.plot(times, [r.get("return_c") for r in units[cdu]], color=colour, linestyle="--", label=f"{cdu} return")
    ax.set_ylabel("coolant temperature (°C)")
    if len(shown) <= 6:
        ax.legend(loc="best", fontsize="small", ncols=2)
    _time_axis(ax)
    return figure


@dataclass(frozen=True)
class Interval:
    """One stretch of time an alert was firing (or keep-firing)."""

    label: str
    severity: str
    start: datetime
    end: datetime
    suppressed: bool  # suppressed by a root cause for part of it at least


def firing_intervals(records: Rows, stop: datetime) -> list[Interval]:
    """The alert log's records (oldest first) as firing intervals; one still firing ends at `stop`."""
    out = []
    for records_of in _by(records, "fingerprint").values():
        start: datetime | None = None
        held = False
        for r in records_of:
            if r["state"] in FIRING:
                start = start or r["time"]
                held = held or r["suppressed"]
            elif start is not None:
                out.append(Interval(_label(r), r["severity"] or "", start, r["time"], held))
                start, held = None, False
        if start is not None:
            out.append(Interval(_label(records_of[-1]), records_of[-1]["severity"] or "", start, stop, held))
    return sorted(out, key=lambda i: (i.start, i.label))


def _label(record: dict) -> str:
    return f"{record['alertname']} {record['where']}".strip()


def alert_timeline(intervals: list[Interval], span: Span) -> Figure:
    """One row per alert and entity, a bar while it fired, coloured by severity; hatched when a
    root-cause alert suppressed it."""
    labels = sorted({i.label for i in intervals})
    figure, ax = _figure("Alert timeline", height=max(2.5, 1.5 + 0.3 * min(len(labels), MOST)))
    if not intervals:
        _no_data(ax, "no alert fired in this range")
        return figure
    labels = labels[:MOST]
    for i in intervals:
        if i.label in labels:
            ax.broken_barh([(date2num(i.start), date2num(i.end) - date2num(i.start))],
                           (labels.index(i.label) - 0.35, 0.7), facecolor=SEVERITY_COLOURS.get(i.severity, "#7f8c8d"),
                           hatch="//" if i.suppressed else None, edgecolor="white", linewidth=0)
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.invert_yaxis()
    ax.legend(handles=[Patch(color=colour, label=severity) for severity, colour in SEVERITY_COLOURS.items()]
              + [Patch(facecolor="#7f8c8d", hatch="//", edgecolor="white", label="suppressed by a root cause")],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_xlim(date2num(span.start), date2num(span.stop))
    ax.xaxis_date(tz=UTC)
    _time_axis(ax)
    return figure
