"""`dcpulse console`: the operators' web application (Starlette), served on 127.0.0.1.

Four views, each a page rendered on the server (Jinja2, autoescaped) and kept live by a
server-sent event stream of the same data as JSON, which the page's own script applies with
`textContent` and class names only (nothing it receives is parsed as markup):
- `/`: every site side by side: PUE now and over 24 h against the site's target, IT load,
  cooling power, active alerts by severity;
- `/site/<site>?metric=inlet|util|power|heat|alert`: the floor, halls, rows and racks from the
  site model, each rack coloured by the metric, CDUs and the racks they cool, the hottest rack;
- `/site/<site>/rack/<rack>`: its servers and accelerators, its CDU's supply, return and flow,
  its recent alerts;
- `/alerts[?site=]`: active alerts with their cause and what they suppress, and the history.
Scripts, styles and fonts are the project's own files: nothing loads from outside the machine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dcpulse.views.console_data import Reader
from dcpulse.views.floor import ACCELERATOR_BANDS, METRICS, band, colour, hottest

PACKAGE = resources.files("dcpulse.views")
# The pages allow only their own scripts, styles, fonts and images, and connect only back here.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _fmt(value: float | None, digits: int = 3, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def _plain(value: Any) -> Any:
    """JSON-ready: times as UTC text to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else value


def sparkline(values: list[float], target: float | None, width: int = 160, height: int = 32) -> dict[str, Any]:
    """SVG polyline points for a PUE series (oldest first) and the y of the target line, on a
    scale that holds both."""
    span = [*values, *([target] if target is not None else [])]
    if not values:
        return {"points": "", "target_y": None, "width": width, "height": height}
    low, high = min(span), max(span)
    pad = max((high - low) * 0.1, 0.01)
    low, high = low - pad, high + pad

    def y(v: float) -> float:
        return round(height - (v - low) / (high - low) * height, 1)

    step = width / max(1, len(values) - 1)
    points = " ".join(f"{round(i * step, 1)},{y(v)}" for i, v in enumerate(values))
    return {"points": points, "target_y": y(target) if target is not None else None, "width": width, "height": height}


def national(reader: Reader) -> dict[str, Any]:
    sites = []
    for s in reader.national():
        over = s["target"] is not None and s["pue_now"] is not None and s["pue_now"] > s["target"]
        sites.append({"site": s["site"], "pue_now": _fmt(s["pue_now"]), "pue_24h": _fmt(s["pue_24h"]),
                      "target": _fmt(s["target"], 2), "verdict": "above target" if over else
                      ("within target" if s["target"] is not None and s["pue_now"] is not None else "no target"),
                      "cls": "bad" if over else "ok", "it_kw": _fmt(s["it_kw"], 0, " kW"),
                      "cooling_kw": _fmt(s["cooling_kw"], 0, " kW"), **{k: str(v) for k, v in s["alerts"].items()},
                      "updated": _plain(s["updated"]), "trend": sparkline(s["trend"], s["target"])})
    return {"sites": sites}


def site(reader: Reader, name: str, metric: str) -> dict[str, Any]:
    values = reader.rack_values(name, metric)
    label, unit, _ = METRICS[metric]
    digits = 1 if metric == "inlet" else 2
    racks = {rack: {"value": _fmt(v, digits, f" {unit}" if unit else "") if metric != "alert" else
                    {0: "", 1: "info", 2: "warning", 3: "critical"}.get(int(v), ""), "cls": colour(metric, v)}
             for rack, v in values.items()}
    inlet = values if metric == "inlet" else reader.rack_values(name, "inlet")  # read once
    top = hottest(inlet)
    return {"metric": metric, "label": label, "racks": racks,
            "hottest": {"rack": top, "inlet": _fmt(inlet.get(top), 1, " °C") if top else "-"},
            "alerts": _alerts(reader.active_alerts(name))}


def _alerts(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"severity": r.get("severity", ""), "alertname": r["alertname"], "site": r.get("site", ""),
             "where": "/".join(str(r[k]) for k in ("hall", "rack", "device") if r.get(k)),
             "rack": r.get("rack", ""), "since": _plain(r["_time"]), "summary": r.get("summary") or "",
             "cause": r.get("cause", ""), "suppressed_by": ", ".join(r["suppressed_by"]),
             "suppresses": ", ".join(sorted(set(r["suppresses"])))} for r in rows]


def alerts(reader: Reader, name: str | None) -> dict[str, Any]:
    history = [{"at": _plain(r["_time"]), "alertname": r["alertname"], "site": r.get("site", ""),
                "where": "/".join(str(r[k]) for k in ("hall", "rack", "device") if r.get(k)),
                "change": f"{r['old']} -> {r['state']}", "suppressed": "yes" if r.get("inhibited_by") else ""}
               for r in reader.history(name)]
    return {"active": _alerts(reader.active_alerts(name)), "history": history}


def rack(reader: Reader, name: str, rack_id: str) -> dict[str, Any]:
    data = reader.rack(name, rack_id)
    servers = []
    for s in data["servers"]:
        accs = sorted({k.split("_", 1)[0] for k in s if k.startswith("acc") and k.endswith("_temp_c")},
                      key=lambda a: int(a[3:]))
        servers.append({"device": s["device"], "power": _fmt(s.get("power_w"), 0, " W"),
                        "inlet": _fmt(s.get("inlet_c"), 1, " °C"),
                        "accelerators": [{"name": a, "temp": _fmt(s.get(f"{a}_temp_c"), 0, " °C"),
                                          "util": _fmt(s.get(f"{a}_util"), 2),
                                          "cls": band(s.get(f"{a}_temp_c"), *ACCELERATOR_BANDS)} for a in accs]})
    coolant = [{"at": _plain(c["_time"]), "supply": _fmt(c.get("supply_c"), 2, " °C"),
                "return": _fmt(c.get("return_c"), 2, " °C"), "flow": _fmt(c.get("flow_l_min"), 1, " L/min")}
               for c in data["coolant"][::-1]]
    history = [{"at": _plain(r["_time"]), "alertname": r["alertname"], "where": r.get("device", ""),
                "change": f"{r['old']} -> {r['state']}", "suppressed": "yes" if r.get("inhibited_by") else ""}
               for r in data["alerts"]]
    return {"servers": servers, "cdu": data["cdu"] or "", "coolant": coolant, "history": history}


def create_app(reader: Reader, refresh_s: float = 2.0) -> Starlette:
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))

    async def page(request: Request, template: str, **context: Any) -> Response:
        response = templates.TemplateResponse(request, template, context)
        response.headers["Content-Security-Policy"] = CSP
        return response

    def metric_of(request: Request) -> str:
        metric = request.query_params.get("metric", "inlet")
        if metric not in METRICS:
            raise HTTPException(400, f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
        return metric

    def known_site(name: str) -> str:
        if name not in reader.models and not reader.floor(name):
            raise HTTPException(404, f"no site {name!r} in the models or the last 24 h of results")
        return name

    async def index(request: Request) -> Response:
        data = await run_in_threadpool(national, reader)
        return await page(request, "national.html", data=data, stream="/events/national")

    async def site_page(request: Request) -> Response:
        name, metric = known_site(request.path_params["site"]), metric_of(request)
        floor = await run_in_threadpool(reader.floor, name)
        data = await run_in_threadpool(site, reader, name, metric)
        return await page(request, "site.html", site=name, floor=floor, metrics=METRICS, data=data,
                          stream=f"/events/site/{name}?metric={metric}")

    async def rack_page(request: Request) -> Response:
        name, rack_id = known_site(request.path_params["site"]), request.path_params["rack"]
        data = await run_in_threadpool(rack, reader, name, rack_id)
        return await page(request, "rack.html", site=name, rack=rack_id, data=data,
                          stream=f"/events/site/{name}/rack/{rack_id}")

    async def alerts_page(request: Request) -> Response:
        name = request.query_params.get("site") or None
        data = await run_in_threadpool(alerts, reader, name)
        return await page(request, "alerts.html", site=name, data=data,
                          stream="/events/alerts" + (f"?site={name}" if name else ""))

    def stream(build: Callable[[], dict[str, Any]]) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            while True:
                try:
                    data = await run_in_threadpool(build)
                    yield b"data: " + orjson.dumps(data) + b"\n\n"
                except Exception as exc:  # noqa: BLE001 - InfluxDB down: say so on the page, keep trying
                    yield b"event: trouble\ndata: " + orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}) + b"\n\n"
                await asyncio.sleep(refresh_s)
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def national_events(request: Request) -> StreamingResponse:
        return stream(lambda: national(reader))

    async def site_events(request: Request) -> StreamingResponse:
        name, metric = request.path_params["site"], metric_of(request)
        return stream(lambda: site(reader, name, metric))

    async def rack_events(request: Request) -> StreamingResponse:
        name, rack_id = request.path_params["site"], request.path_params["rack"]
        return stream(lambda: rack(reader, name, rack_id))

    async def alert_events(request: Request) -> StreamingResponse:
        name = request.query_params.get("site") or None
        return stream(lambda: alerts(reader, name))

    return Starlette(routes=[
        Route("/", index),
        Route("/site/{site}", site_page),
        Route("/site/{site}/rack/{rack}", rack_page),
        Route("/alerts", alerts_page),
        Route("/events/national", national_events),
        Route("/events/site/{site}", site_events),
        Route("/events/site/{site}/rack/{rack}", rack_events),
        Route("/events/alerts", alert_events),
        Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
    ])
