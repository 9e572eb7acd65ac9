"""The questions SREs ask of dcpulse's buckets, each a pure Flux builder plus one function that
runs it with the read-only token and returns rows (dicts with fixed keys, units in the names).
`dcpulse query` prints them; `dcpulse report` draws them.

Ranges are [start, stop) and end at now at the latest: the analytics reads go through
`measurement_query`, whose range stops at now (docs/query-and-report.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from influxdb_client.client.exceptions import InfluxDBError
from urllib3.exceptions import HTTPError

from dcpulse.producers.run import parse_duration
from dcpulse.settings import BucketSettings, Settings
from dcpulse.sinks.query import alert_log_query, flux_string, flux_time, measurement_query, read_rows

Rows = list[dict[str, Any]]
WINDOW_SECONDS = {"1m": 60, "15m": 900, "1h": 3600}  # the windows the pipeline stores (docs/influx-schema.md)
WINDOWS = tuple(WINDOW_SECONDS)
# --by of hottest-racks -> the server fields it ranks.
SENSOR_FIELDS: dict[str, str] = {"inlet": 'r._field == "inlet_c"', "accelerator": r"r._field =~ /^acc[0-9]+_temp_c$/"}
# Which raw energy register answers which part of the split (docs/schema.md, "What the agents publish").
ENERGY_ROLES: dict[tuple[str, str], str] = {
    ("facility_meter", "energy_kwh"): "facility",
    ("ups", "input_energy_kwh"): "ups_input",
    ("pdu", "energy_kwh"): "it",
    **{(kind, "energy_kwh"): "cooling" for kind in ("cdu", "crah", "chiller", "cooling_tower", "dry_cooler", "pump")},
}


class QueryError(Exception):
    """A question that cannot be answered, said in one line."""


@dataclass(frozen=True)
class Span:
    start: datetime
    stop: datetime

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M:%S} to {self.stop:%Y-%m-%d %H:%M:%S} UTC"


def _instant(text: str, now: datetime, option: str) -> datetime:
    """A duration back from now (`24h`, `90m`), an RFC 3339 time (UTC if it has no zone) or `now`."""
    if text.strip() == "now":
        return now
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(f"{option} {text!r} is neither a duration (30m, 24h, 7d) nor a time "
                         "(2026-07-01T00:00:00Z)") from None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def parse_span(since: str, until: str, now: datetime) -> Span:
    """`--since` / `--until` as a range; `until` is capped at now (see the module's docstring)."""
    span = Span(_instant(since, now, "--since"), min(_instant(until, now, "--until"), now))
    if span.start >= span.stop:
        raise QueryError(f"--since ({span.start:%Y-%m-%d %H:%M:%S}) is not before --until "
                         f"({span.stop:%Y-%m-%d %H:%M:%S}, now at the latest)")
    return span


@dataclass(frozen=True)
class Source:
    """One InfluxDB and its buckets, read with the read-only token."""

    url: str
    token: str
    org: str
    buckets: BucketSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> Source:
        from dcpulse.services.onboarding import influx_token

        try:
            token = influx_token(settings, "read")
        except RuntimeError as exc:
            raise QueryError(str(exc)) from None
        return cls(settings.influx.url, token, settings.influx.org, settings.influx.buckets)

    def rows(self, query: str) -> Rows:
        try:
            return read_rows(self.url, self.token, self.org, query)
        except InfluxDBError as exc:  # the server answered: bad Flux, no such bucket, a refused token
            raise QueryError(f"InfluxDB at {self.url} answered: {exc.message}") from None
        except HTTPError as exc:
            refused = _caused_by(exc, ConnectionRefusedError)
            raise QueryError(f"InfluxDB at {self.url} is not reachable: "
                             + ("connection refused (is it running? `dcpulse services status`)" if refused
                                else f"{type(exc).__name__}: {exc}")) from None


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ---- pure Flux builders -------------------------------------------------------------------------


def _range(span: Span) -> str:
    return f"range(start: {flux_time(span.start)}, stop: {flux_time(span.stop)})"


def _any(column: str, values: Iterable[str]) -> str:
    return "(" + " or ".join(f"r.{column} == {flux_string(v)}" for v in values) + ")"


def sites_query(bucket: str, span: Span) -> str:
    """The sites with points in `bucket` in the range."""
    return ('import "influxdata/influxdb/schema"\n'
            f"schema.tagValues(bucket: {flux_string(bucket)}, tag: \"site\", start: {flux_time(span.start)}, "
            f"stop: {flux_time(span.stop)})\n")


def window_query(bucket: str, measurement: str, site: str, span: Span, window: str | None,
                 where: str = "") -> str:
    """A site's window results of one measurement, one row per point (fields pivoted), of one
    stored window length (`None`: all of them), optionally filtered further by `where`."""
    conditions = [f"r._time < {flux_time(span.stop)}"]
    if window is not None:
        conditions.append(f"r.window == {flux_string(window)}")
    if where:
        conditions.append(where)
    return (measurement_query(bucket, measurement, site, span.start)
            + f"  |> filter(fn: (r) => {' and '.join(conditions)})\n")


def energy_query(bucket: str, site: str, span: Span) -> str:
    """Per meter kind, the sum over its meters of each energy register's increase in the range
    (`increase` unwraps counter resets)."""
    kinds = sorted({kind for kind, _ in ENERGY_ROLES})
    fields = sorted({name for _, name in ENERGY_ROLES})
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> {_range(span)}\n"
            f"  |> filter(fn: (r) => r.site == {flux_string(site)} and {_any('_measurement', kinds)}"
            f" and {_any('_field', fields)})\n"
            "  |> increase()\n"
            "  |> last()\n"
            '  |> group(columns: ["_measurement", "_field"])\n'
            "  |> sum()\n")


def hottest_racks_query(bucket: str, site: str, span: Span, sensor: str, top: int) -> str:
    """Each rack's hottest server reading (inlet, or any accelerator), the `top` hottest racks."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> {_range(span)}\n"
            f"  |> filter(fn: (r) => r._measurement == \"server\" and r.site == {flux_string(site)}"
            f" and {SENSOR_FIELDS[sensor]})\n"
            '  |> group(columns: ["rack"])\n'
            "  |> max()\n"
            "  |> group()\n"
            '  |> sort(columns: ["_value"], desc: true)\n'
            f"  |> limit(n: {int(top)})\n")


def coolant_query(bucket: str, site: str, span: Span, every_s: float, cdu: str | None = None) -> str:
    """Supply and return temperatures and flow of one CDU (`None`: every CDU of the site), as
    means over `every_s` buckets aligned to UTC and stamped at their start (0: every sample)."""
    device = f" and r.device == {flux_string(cdu)}" if cdu is not None else ""
    aggregate = (f"  |> aggregateWindow(every: {int(every_s)}s, fn: mean, createEmpty: false, timeSrc: \"_start\")\n"
                 if every_s > 0 else "")
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> {_range(span)}\n"
            f"  |> filter(fn: (r) => r._measurement == \"cdu\" and r.site == {flux_string(site)}{device}"
            f" and {_any('_field', ('supply_c', 'return_c', 'flow_l_min'))})\n"
            + aggregate +
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n')


def cdus_query(bucket: str, site: str, span: Span) -> str:
    """The CDUs of a site with samples in the range."""
    return ('import "influxdata/influxdb/schema"\n'
            f"schema.tagValues(bucket: {flux_string(bucket)}, tag: \"device\", "
            f"predicate: (r) => r._measurement == \"cdu\" and r.site == {flux_string(site)}, "
            f"start: {flux_time(span.start)}, stop: {flux_time(span.stop)})\n")


# ---- the questions ------------------------------------------------------------------------------


def sites(source: Source, span: Span) -> list[str]:
    return sorted(row["_value"] for row in source.rows(sites_query(source.buckets.analytics, span)))


def check_site(source: Source, site: str, span: Span) -> None:
    """Raise unless the site has window results in the range, naming the sites that do."""
    known = sites(source, span)
    if site in known:
        return
    if not known:
        raise QueryError(f"no site has results in bucket {source.buckets.analytics} from {span} (an empty range)")
    raise QueryError(f"unknown site {site!r}: sites with results from {span}: {', '.join(known)}")


def pue(source: Source, site: str, span: Span, window: str | None) -> Rows:
    """PUE per category (1 UPS output, 2 PDU outputs, 3 server inputs) and window, with the
    window's energies, coverage and quality; oldest first."""
    rows = source.rows(window_query(source.buckets.analytics, "pue", site, span, window))
    return [{"time": r["_time"], "window": r["window"], "category": r["category"], "pue": r.get("pue"),
             "facility_kwh": r.get("facility_kwh"), "it_kwh": r.get("it_kwh"), "coverage": r.get("coverage"),
             "quality": r.get("quality")} for r in sorted(rows, key=lambda r: (r["_time"], r["category"]))]


def ppue(source: Source, site: str, span: Span, window: str | None) -> Rows:
    """pPUE per hall and window (hall UPS input + CDU pumps + CRAH fans over hall PDU output)."""
    rows = source.rows(window_query(source.buckets.analytics, "ppue", site, span, window))
    return [{"time": r["_time"], "window": r["window"], "hall": r["hall"], "ppue": r.get("ppue"),
             "infra_kwh": r.get("infra_kwh"), "it_kwh": r.get("it_kwh"), "coverage": r.get("coverage"),
             "quality": r.get("quality")} for r in sorted(rows, key=lambda r: (r["_time"], r["hall"]))]


def energy(source: Source, site: str, span: Span) -> Rows:
    """Where the site's energy went over the range; see `energy_split`."""
    totals: dict[str, float] = {}
    for row in source.rows(energy_query(source.buckets.raw, site, span)):
        role = ENERGY_ROLES.get((row["_measurement"], row["_field"]))
        if role is not None:
            totals[role] = totals.get(role, 0.0) + row["_value"]
    return energy_split(totals) if totals else []


def energy_split(totals: dict[str, float]) -> Rows:
    """IT, distribution losses, cooling and other, from the energy registers' increases by role.

    The window results store only facility and IT energies (and a hall's UPS input plus cooling
    as one sum), so the split reads the raw meters: IT = PDU outputs (servers and network, as
    category-2 PUE); distribution losses = UPS inputs - PDU outputs (UPS conversion, PDUs,
    cabling); cooling = CDU pumps, CRAH fans, chillers, heat-rejection fans, facility pumps;
    other = facility - UPS inputs - cooling (lighting and the like, which no meter covers)."""
    missing = sorted({"facility", "ups_input", "it", "cooling"} - set(totals))
    if missing:
        raise QueryError(f"the energy split needs registers the raw bucket does not hold in this range: "
                         f"{', '.join(missing)}")
    facility = totals["facility"]
    parts = {"it": totals["it"], "distribution_losses": totals["ups_input"] - totals["it"],
             "cooling": totals["cooling"], "other": facility - totals["ups_input"] - totals["cooling"],
             "facility": facility}
    return [{"part": part, "kwh": kwh, "share": kwh / facility if facility > 0 else None}
            for part, kwh in parts.items()]


def hottest_racks(source: Source, site: str, span: Span, sensor: str, top: int) -> Rows:
    """The `top` racks by their hottest server inlet (or accelerator) reading, hottest first."""
    rows = source.rows(hottest_racks_query(source.buckets.raw, site, span, sensor, top))
    # read_rows orders by time; the answer's order is by temperature (ties by rack).
    return [{"rack": r.get("rack"), "hall": r.get("hall"), "max_c": r["_value"], "device": r.get("device"),
             "sensor": r["_field"], "time": r["_time"]}
            for r in sorted(rows, key=lambda r: (-r["_value"], r.get("rack") or ""))]


def usage_windows(source: Source, site: str, span: Span, level: str) -> Rows:
    """The minute utilisation results of every rack (or hall) of a site, oldest first."""
    rows = source.rows(window_query(source.buckets.analytics, "utilisation", site, span, "1m",
                                    f"r.level == {flux_string(level)}"))
    return [{k: v for k, v in r.items() if not k.startswith("_") and k not in ("site", "level", "window")}
            | {"time": r["_time"]} for r in rows]


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (Flux `quantile(method: "exact_selector")`)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def utilisation_percentiles(windows: Rows) -> Rows:
    """Per entity over the range: mean accelerator utilisation weighted by samples, p50 and p95
    of the minute means (nearest rank), the largest single sample, and the mean CPU utilisation
    of the minutes."""
    by_entity: dict[str, Rows] = {}
    for row in windows:
        if row.get("acc_util_mean") is not None:
            by_entity.setdefault(row["entity"], []).append(row)
    out = []
    for entity, rows in sorted(by_entity.items()):
        means = [r["acc_util_mean"] for r in rows]
        samples = sum(r["acc_samples"] for r in rows)
        cpu = [r["cpu_util_mean"] for r in rows if r.get("cpu_util_mean") is not None]
        hall = {"hall": rows[0]["hall"]} if rows[0].get("hall") else {}  # racks only
        out.append({"entity": entity, **hall, "minutes": len(rows),
                    "acc_util_mean": sum(r["acc_util_mean"] * r["acc_samples"] for r in rows) / samples,
                    "acc_util_p50": nearest_rank(means, 0.5), "acc_util_p95": nearest_rank(means, 0.95),
                    "acc_util_max": max(r["acc_util_max"] for r in rows),
                    "cpu_util_mean": sum(cpu) / len(cpu) if cpu else None})
    return out


def utilisation(source: Source, site: str, span: Span, level: str) -> Rows:
    return utilisation_percentiles(usage_windows(source, site, span, level))


def above_provisioned(windows: Rows, above: float) -> Rows:
    """Racks whose minute power / provisioned ratio exceeded `above` at least once: how often,
    the peak and when, highest peak first."""
    by_rack: dict[str, Rows] = {}
    for row in windows:
        if row.get("power_ratio") is not None:
            by_rack.setdefault(row["entity"], []).append(row)
    out = []
    for rack, rows in by_rack.items():
        over = [r for r in rows if r["power_ratio"] > above]
        if not over:
            continue
        peak = max(over, key=lambda r: r["power_ratio"])
        out.append({"rack": rack, "hall": peak.get("hall"), "minutes_above": len(over), "minutes": len(rows),
                    "peak_ratio": peak["power_ratio"], "peak_kw": peak["power_kw"],
                    "provisioned_kw": peak["provisioned_kw"], "peak_time": peak["time"],
                    "last_above": over[-1]["time"]})
    return sorted(out, key=lambda r: (-r["peak_ratio"], r["rack"]))


def near_provisioned(source: Source, site: str, span: Span, above: float) -> Rows:
    return above_provisioned(usage_windows(source, site, span, "rack"), above)


def coolant(source: Source, site: str, span: Span, every_s: float, cdu: str | None = None) -> Rows:
    """A CDU's (or every CDU's) supply and return temperature, their difference and flow."""
    rows = source.rows(coolant_query(source.buckets.raw, site, span, every_s, cdu))
    return [{"time": r["_time"], "cdu": r["device"], "hall": r.get("hall"), "supply_c": r.get("supply_c"),
             "return_c": r.get("return_c"),
             "delta_t_k": r["return_c"] - r["supply_c"] if r.get("return_c") is not None
             and r.get("supply_c") is not None else None,
             "flow_l_min": r.get("flow_l_min")} for r in sorted(rows, key=lambda r: (r["_time"], r["device"]))]


def cdus(source: Source, site: str, span: Span) -> list[str]:
    return sorted(row["_value"] for row in source.rows(cdus_query(source.buckets.raw, site, span)))


def alert_rows(log: Rows, span: Span) -> Rows:
    """The alert log's records in the range, oldest first: where is hall/rack/device (as far as
    the entity has them); suppressed: a root-cause alert held it back then."""
    return [{"time": r["_time"], "alertname": r.get("alertname"), "severity": r.get("severity"),
             "where": "/".join(r[k] for k in ("hall", "rack", "device") if r.get(k)), "old": r.get("old"),
             "state": r.get("state"), "value": r.get("value"), "suppressed": bool(r.get("inhibited_by")),
             "flapping": bool(r.get("flapping")), "summary": r.get("summary"), "fingerprint": r.get("fingerprint")}
            for r in log if r["_time"] < span.stop]


def alerts(source: Source, site: str, span: Span, rack: str | None = None, rule: str | None = None) -> Rows:
    """The alert history: every transition the alert log holds (docs/influx-schema.md)."""
    return alert_rows(source.rows(alert_log_query(source.buckets.alerts, span.start, site, rack, rule)), span)


def flux(source: Source, query: str) -> Rows:
    """Any Flux query, as rows."""
    return source.rows(query)


def pick_window(rows: Rows, enough: int = 12) -> str | None:
    """The coarsest stored window with at least `enough` results among `rows` (a chart of 96
    quarter hours reads better than 1,440 minutes), else the one with the most."""
    counts = {w: sum(1 for r in rows if r["window"] == w) for w in WINDOWS}
    for window in reversed(WINDOWS):
        if counts[window] >= enough:
            return window
    best = max(WINDOWS, key=lambda w: (counts[w], -WINDOWS.index(w)))
    return best if counts[best] else None
