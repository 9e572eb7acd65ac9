"""What the console shows, read from InfluxDB with the read-only token (Flux), one function per view.

Every value is what the pipeline stored: PUE and utilisation from the window results, rack inlet
temperatures, servers and CDUs from the raw bucket, alerts from the alert log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dcpulse.producers.sitemodel import load_preset, preset_names
from dcpulse.settings import Settings
from dcpulse.sinks.query import alert_log_query, flux_string, flux_time, read_rows
from dcpulse.streams.alertbook import active_from_log
from dcpulse.streams.alertrules import Inhibition
from dcpulse.streams.windows import cdu_heat_kw
from dcpulse.views.floor import SEVERITY_RANK, Hall, floor_from_model, floor_from_racks

Rows = list[dict[str, Any]]
RECENT = timedelta(minutes=5)  # what "now" reads: the newest value of the last 5 minutes
COOLING_POWER = {"chiller": "power_kw", "cooling_tower": "fan_power_kw", "dry_cooler": "fan_power_kw",
                 "pump": "power_kw", "cdu": "power_kw", "crah": "fan_power_kw"}


def pue_trend(rows: Rows) -> list[float]:
    """Minute windows (oldest first) -> PUE per 15 minutes (per minute over a run shorter than
    2 h), each the energy-weighted sum over sum of its minutes."""
    if not rows:
        return []
    span = rows[-1]["_time"] - rows[0]["_time"]
    step = timedelta(minutes=15) if span > timedelta(hours=2) else timedelta(minutes=1)
    buckets: dict[int, list[float]] = {}
    for row in rows:
        energy = buckets.setdefault(int(row["_time"].timestamp() // step.total_seconds()), [0.0, 0.0])
        energy[0] += row.get("facility_kwh") or 0.0
        energy[1] += row.get("it_kwh") or 0.0
    return [facility / it for _, (facility, it) in sorted(buckets.items()) if it > 0]


class Reader:
    """The console's reads, for one pipeline's buckets."""

    def __init__(self, settings: Settings, token: str, inhibitions: list[Inhibition],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.token = token
        self.inhibitions = inhibitions
        self.now = now
        self.buckets = settings.influx.buckets
        self.models = {spec.name: spec for spec in map(load_preset, preset_names())}

    def _rows(self, query: str) -> Rows:
        return read_rows(self.settings.influx.url, self.token, self.settings.influx.org, query)

    def _since(self, back: timedelta) -> str:
        return flux_time(self.now() - back)

    def national(self) -> list[dict[str, Any]]:
        """Every site with results in the last 24 h, side by side."""
        pue = self._rows(
            f"from(bucket: {flux_string(self.buckets.analytics)}) |> range(start: {self._since(timedelta(hours=24))})"
            ' |> filter(fn: (r) => r._measurement == "pue" and r.window == "1m" and r.category == "1"'
            ' and (r._field == "facility_kwh" or r._field == "it_kwh" or r._field == "pue"))'
            ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
        cooling = self.cooling_kw()
        alerts = self.active_alerts()
        sites: dict[str, dict[str, Any]] = {}
        for row in pue:
            site = sites.setdefault(row["site"], {"site": row["site"], "facility": 0.0, "it": 0.0, "last": None,
                                                  "rows": []})
            site["facility"] += row.get("facility_kwh") or 0.0
            site["it"] += row.get("it_kwh") or 0.0
            site["rows"].append(row)
            if row.get("pue") is not None:
                site["last"] = row
        out = []
        for name, s in sorted(sites.items()):
            last = s["last"]
            model = self.models.get(name)
            by_severity = {sev: sum(1 for a in alerts if a["site"] == name and a.get("severity") == sev)
                           for sev in ("critical", "warning", "info")}
            out.append({
                "site": name, "pue_now": last["pue"] if last else None,
                "pue_24h": s["facility"] / s["it"] if s["it"] else None,
                "target": model.pue_target if model else None,
                "it_kw": last["it_kwh"] * 60 if last else None, "cooling_kw": cooling.get(name),
                "alerts": by_severity, "updated": last["_time"] if last else None,
                "trend": pue_trend(s["rows"]),
            })
        return out

    def cooling_kw(self, site: str | None = None) -> dict[str, float]:
        """Site -> the newest power of its cooling plant (chillers, heat rejection, pumps, CDUs, CRAHs)."""
        kinds = " or ".join(f'(r._measurement == "{k}" and r._field == "{f}")' for k, f in COOLING_POWER.items())
        where = f" and r.site == {flux_string(site)}" if site else ""
        rows = self._rows(f"from(bucket: {flux_string(self.buckets.raw)}) |> range(start: {self._since(RECENT)})"
                          f" |> filter(fn: (r) => ({kinds}){where}) |> last()")
        out: dict[str, float] = {}
        for row in rows:
            out[row["site"]] = out.get(row["site"], 0.0) + float(row["_value"])
        return out

    def floor(self, site: str) -> list[Hall]:
        model = self.models.get(site)
        if model is not None:
            return floor_from_model(model)
        rows = self._rows(
            f"from(bucket: {flux_string(self.buckets.analytics)}) |> range(start: {self._since(timedelta(hours=24))})"
            f' |> filter(fn: (r) => r._measurement == "utilisation" and r.level == "rack" and r.site == {flux_string(site)}'
            ' and r._field == "power_kw") |> last()')
        return floor_from_racks({r["entity"]: r.get("hall") for r in rows})

    def rack_values(self, site: str, metric: str) -> dict[str, float]:
        """Rack -> the metric's newest value (alert: the worst active severity's rank)."""
        if metric == "inlet":
            rows = self._rows(
                f"from(bucket: {flux_string(self.buckets.raw)}) |> range(start: {self._since(RECENT)})"
                f' |> filter(fn: (r) => r._measurement == "server" and r._field == "inlet_c" and r.site == {flux_string(site)})'
                ' |> last() |> group(columns: ["rack"]) |> max()')
            return {r["rack"]: float(r["_value"]) for r in rows if r.get("rack")}
        if metric in ("util", "power"):
            field = "acc_util_mean" if metric == "util" else "power_ratio"
            rows = self._rows(
                f"from(bucket: {flux_string(self.buckets.analytics)}) |> range(start: {self._since(timedelta(hours=1))})"
                f' |> filter(fn: (r) => r._measurement == "utilisation" and r.level == "rack" and r.window == "1m"'
                f' and r.site == {flux_string(site)} and r._field == {flux_string(field)}) |> last()')
            return {r["entity"]: float(r["_value"]) for r in rows}
        if metric == "heat":
            return self._rack_heat(site)
        worst: dict[str, float] = {}
        for alert in self.active_alerts(site):
            if alert.get("rack") and not alert["suppressed_by"]:
                rank = SEVERITY_RANK.get(alert.get("severity", ""), 0)
                worst[alert["rack"]] = max(worst.get(alert["rack"], 0), rank)
        return worst

    def _rack_heat(self, site: str) -> dict[str, float]:
        """Each rack gets its CDU's heat over capacity (the CDU's newest flow x c_p x dT)."""
        rows = self._rows(
            f"from(bucket: {flux_string(self.buckets.raw)}) |> range(start: {self._since(RECENT)})"
            f' |> filter(fn: (r) => r._measurement == "cdu" and r.site == {flux_string(site)})'
            ' |> last() |> pivot(rowKey: ["device"], columnKey: ["_field"], valueColumn: "_value")')
        ratio = {}
        for r in rows:
            measured = {k: v for k, v in r.items() if v is not None}  # pivot leaves missing fields None
            if r.get("capacity_kw") and (heat := cdu_heat_kw(measured)) is not None:
                ratio[r["device"]] = heat / r["capacity_kw"]
        return {rack: ratio[cdu] for hall in self.floor(site) for cdu, racks in hall.cdus.items() if cdu in ratio
                for rack in racks}

    def rack(self, site: str, rack: str) -> dict[str, Any]:
        """A rack's servers (newest sample of each), its CDU's recent supply, return and flow, its alerts."""
        servers = self._rows(
            f"from(bucket: {flux_string(self.buckets.raw)}) |> range(start: {self._since(RECENT)})"
            f' |> filter(fn: (r) => r._measurement == "server" and r.site == {flux_string(site)} and r.rack == {flux_string(rack)})'
            ' |> last() |> pivot(rowKey: ["device"], columnKey: ["_field"], valueColumn: "_value")')
        cdu = next((c for hall in self.floor(site) for c, racks in hall.cdus.items() if rack in racks), None)
        coolant = [] if cdu is None else self._rows(
            f"from(bucket: {flux_string(self.buckets.raw)}) |> range(start: {self._since(timedelta(minutes=30))})"
            f' |> filter(fn: (r) => r._measurement == "cdu" and r.site == {flux_string(site)} and r.device == {flux_string(cdu)}'
            ' and (r._field == "supply_c" or r._field == "return_c" or r._field == "flow_l_min"))'
            ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
        history = self._rows(alert_log_query(self.buckets.alerts, self.now() - timedelta(hours=24), site=site, rack=rack))
        return {"servers": sorted(servers, key=lambda r: r["device"]), "cdu": cdu, "coolant": coolant[-30:],
                "alerts": history[-20:][::-1]}

    def active_alerts(self, site: str | None = None) -> Rows:
        rows = self._rows(alert_log_query(self.buckets.alerts, self.now() - timedelta(days=7), site=site))
        return active_from_log(rows, self.inhibitions)

    def history(self, site: str | None = None, limit: int = 50) -> Rows:
        rows = self._rows(alert_log_query(self.buckets.alerts, self.now() - timedelta(hours=24), site=site))
        return rows[-limit:][::-1]
