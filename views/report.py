"""`dcpulse report`: one self-contained HTML file (figures inline as base64 PNG, no external
resource, every text escaped) and the PNG files beside it, for a reader who never used dcpulse.
Every read goes through views/queries.py."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from matplotlib.figure import Figure

from dcpulse.producers.sitemodel import preset_thresholds
from dcpulse.views import charts, queries
from dcpulse.views.queries import QueryError, Rows, Source, Span


@dataclass(frozen=True)
class Chart:
    slug: str  # the PNG's file name
    title: str
    caption: str  # what the figure shows, in one sentence, with units
    figure: Figure


@dataclass(frozen=True)
class Report:
    html: Path
    pngs: list[Path]
    charts: list[Chart]


def pue_target(site: str) -> float | None:
    """The site model's PUE target, if the site is one of the presets."""
    return preset_thresholds().get(site, {}).get("pue_target")


def _overall_pue(rows: Rows, window: str | None) -> float | None:
    """Category-1 PUE over the whole range: energy over energy, never a mean of ratios."""
    chosen = [r for r in rows if r["window"] == window and r["category"] == "1" and r["it_kwh"]]
    it = sum(r["it_kwh"] for r in chosen)
    return sum(r["facility_kwh"] for r in chosen) / it if it > 0 else None


def build(source: Source, site: str, span: Span) -> tuple[list[Chart], list[str]]:
    """The figures and the at-a-glance sentences."""
    target = pue_target(site)
    pue_rows = queries.pue(source, site, span, None)
    window = queries.pick_window(pue_rows)  # the same resolution for every time axis
    step_s = queries.WINDOW_SECONDS[window or "1m"]
    try:
        split, split_note = queries.energy(source, site, span), ""
    except QueryError as exc:  # e.g. a range older than the raw bucket's retention
        split, split_note = [], str(exc)
    racks = queries.usage_windows(source, site, span, "rack")
    log = queries.alerts(source, site, span)
    intervals = charts.firing_intervals(log, span.stop)
    target_text = f"{target:g}" if target is not None else "unknown (not a preset site)"
    built = [
        Chart("pue", "PUE over time against the target",
              f"Power usage effectiveness per {window or '-'} window: the facility's energy divided by the energy "
              "delivered to IT equipment, metered at the UPS output (category 1), the PDU outputs (2) and the server "
              f"inputs (3); 1.0 would mean no overhead, lower is better; the dashed line is the site's target "
              f"({target_text}).", charts.pue_chart(pue_rows, window, target)),
        Chart("energy", "Where the energy went",
              "The facility's energy over the range in kWh, split into IT equipment (PDU outputs), distribution "
              "losses (UPS and PDUs), cooling (CDU pumps, air handlers, chillers, heat rejection, facility pumps) and "
              "other (lighting and the like), with each part's share of the total.",
              charts.energy_chart(split, split_note)),
        Chart("ppue", "pPUE per hall",
              f"Partial PUE of each hall per {window or '-'} window: the hall's UPS input, CDU pumps and air "
              "handlers over its PDU output energy; site-wide plant such as chillers is not included.",
              charts.ppue_chart(queries.ppue(source, site, span, window), window)),
        Chart("utilisation", "Rack utilisation heat map",
              "Mean accelerator (GPU/NPU) utilisation of each rack in each minute, in percent, from dark (idle) to "
              f"yellow (fully busy); blank where a rack reported nothing; at most the {charts.MOST} busiest racks.",
              charts.utilisation_heatmap(racks)),
        Chart("power", "Power against provisioned power per rack",
              "Each rack's mean and peak one-minute PDU power in kW next to the power it is provisioned for (black "
              f"mark); at most the {charts.MOST} racks closest to their provisioned power.",
              charts.power_chart(racks)),
        Chart("coolant", "Coolant temperatures per CDU",
              f"Liquid-cooling loop temperatures in °C of each coolant distribution unit (CDU), {step_s // 60}-minute "
              "means: supply to the racks (solid) and return from them (dashed); the gap is the heat taken away; at "
              f"most the {charts.MOST} CDUs with the warmest return.",
              charts.coolant_chart(queries.coolant(source, site, span, step_s))),
        Chart("alerts", "Alert timeline",
              "When each alert was firing, one row per alert and place (hall/rack/device), red critical, orange "
              "warning, blue info; hatched while a root-cause alert (e.g. its CDU's pump failure) suppressed it; "
              f"at most {charts.MOST} rows.",
              charts.alert_timeline(intervals, span)),
    ]
    glance = [f"Site PUE target: {target_text}."]
    overall = _overall_pue(pue_rows, window)
    if overall is not None:
        verdict = "" if target is None else (" (above target)" if overall > target else " (within target)")
        glance.append(f"PUE (category 1) over the range: {overall:.3f}{verdict}.")
    if split and split[-1]["share"] is not None:
        facility = split[-1]
        it = next(r for r in split if r["part"] == "it")
        glance.append(f"Facility energy: {facility['kwh']:,.1f} kWh, of which IT equipment {it['share']:.1%}.")
    hottest = queries.hottest_racks(source, site, span, "inlet", 1)
    if hottest:
        h = hottest[0]
        glance.append(f"Hottest rack by server inlet air: {h['rack']} at {h['max_c']:.1f} °C "
                      f"({h['time']:%Y-%m-%d %H:%M} UTC).")
    fired = {i.label for i in intervals}
    held = {i.label for i in intervals if i.suppressed}
    glance.append(f"Alerts that fired: {len(fired)} ({len(intervals)} firing periods)"
                  + (f"; {len(held)} of them were suppressed by a root cause." if held else "."))
    return built, glance


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


STYLE = ("body{font-family:sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222}"
         "img{max-width:100%;border:1px solid #ddd}.meta{color:#555}section{margin-top:2em}")


def render_html(site: str, span: Span, glance: list[str], figures: list[Chart], images: list[bytes],
                generated: datetime) -> str:
    """The page: a title, what the range is, the at-a-glance list, and each figure with its
    one-sentence explanation. Everything is escaped; images are data: URIs."""
    sections = "".join(
        f'<section><h2>{escape(c.title)}</h2><p>{escape(c.caption)}</p>'
        f'<img src="data:image/png;base64,{base64.b64encode(image).decode()}" alt="{escape(c.title)}"></section>'
        for c, image in zip(figures, images, strict=True))
    items = "".join(f"<li>{escape(line)}</li>" for line in glance)
    title = f"Site {site}: energy, cooling and alerts"
    meta = (f"From {span}. Generated {generated:%Y-%m-%d %H:%M} UTC by dcpulse from the site telemetry stored "
            "in InfluxDB.")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f'<p class="meta">{escape(meta)}</p>'
            "<p>PUE (power usage effectiveness) is the energy the whole facility draws divided by the energy that "
            "reaches the IT equipment: 1.0 would mean every kWh goes to computing; the rest goes to cooling, power "
            "conversion and the building.</p>"
            f"<h2>At a glance</h2><ul>{items}</ul>{sections}</body></html>\n")


def write_report(source: Source, site: str, span: Span, out_dir: Path) -> Report:
    """Write `<out_dir>/report.html` and one PNG per figure beside it."""
    built, glance = build(source, site, span)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [png(c.figure) for c in built]
    pngs = []
    for number, (chart, image) in enumerate(zip(built, images, strict=True), start=1):
        path = out_dir / f"{number}-{chart.slug}.png"
        path.write_bytes(image)
        pngs.append(path)
    html = out_dir / "report.html"
    html.write_text(render_html(site, span, glance, built, images, datetime.now(UTC)), encoding="utf-8")
    return Report(html, pngs, built)
