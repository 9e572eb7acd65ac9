"""What each result measurement holds, from additive quantities: one definition for a minute
window and for its 15-minute and 1-hour roll-ups (docs/influx-schema.md).

A roll-up sums the minutes' quantities (`energy.rollup`) and applies the same function, so a
roll-up ratio is always a ratio of sums.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dcpulse.contract import AnalyticsPoint
from dcpulse.streams.energy import quality, ratio

Fields = dict[str, float | str]


def window_label(ms: int) -> str:
    return f"{ms // 3_600_000}h" if ms % 3_600_000 == 0 else f"{ms // 60_000}m" if ms % 60_000 == 0 else f"{ms // 1000}s"


def point(measurement: str, tags: dict[str, str], fields: Fields, start_ms: int) -> AnalyticsPoint:
    return AnalyticsPoint(measurement=measurement, tags=tags, fields=fields,
                          time=datetime.fromtimestamp(start_ms / 1000, UTC))


@dataclass(frozen=True)
class Quality:
    complete: float
    usable: float

    def flag(self, coverage: float) -> str:
        return quality(coverage, self.complete, self.usable)


def pue_fields(v: Mapping[str, float], coverage: float, q: Quality) -> Fields:
    """PUE = facility energy / IT energy at the category's metering point."""
    fields: Fields = {"facility_kwh": v["facility_kwh"], "it_kwh": v["it_kwh"], "coverage": coverage,
                      "quality": q.flag(coverage)}
    value = ratio(v["facility_kwh"], v["it_kwh"]) if v.get("facility_present", 1.0) > 0 else None
    if value is not None:
        fields["pue"] = value
    return fields


def ppue_fields(v: Mapping[str, float], coverage: float, q: Quality) -> Fields:
    """pPUE of a hall = (IT + the hall's own infrastructure) / IT, with IT = the hall's PDU
    outputs and the zone's energy = UPS input (IT + distribution losses) + CDU pumps + CRAH
    fans; `infra_kwh` = zone - IT."""
    fields: Fields = {"it_kwh": v["it_kwh"], "coverage": coverage, "quality": q.flag(coverage)}
    if v["it_kwh"] > 0 and v.get("ups_present", 1.0) > 0:
        fields["ppue"] = v["zone_kwh"] / v["it_kwh"]
        fields["infra_kwh"] = v["zone_kwh"] - v["it_kwh"]
    return fields


def efficiency_fields(v: Mapping[str, float], coverage: float, q: Quality, pue3: float | None) -> Fields:
    """WUE = make-up water / category-1 IT energy; ITUE = server input energy / compute
    (accelerator + CPU gauges integrated over the same servers); TUE = ITUE x PUE(cat 3)."""
    fields: Fields = {}
    if v.get("water_present", 0.0) > 0 and v["it1_kwh"] > 0:
        fields["water_l"] = v["water_l"]
        fields["wue_l_per_kwh"] = v["water_l"] / v["it1_kwh"]
    if v["compute_kwh"] > 0 and v["it3_kwh"] > 0:
        itue = v["it3_kwh"] / v["compute_kwh"]
        fields["itue"] = itue
        if pue3 is not None:
            fields["tue"] = itue * pue3
    if fields:
        fields.update(coverage=coverage, quality=q.flag(coverage))
    return fields


@dataclass(slots=True)
class Usage:
    """Gauge aggregates of a rack, hall or site over one window: accelerator utilisation as an
    exact histogram (permille -> samples; the agents report 0.001 resolution), CPU utilisation,
    PDU power against provisioned, CDU heat against capacity (sums of per-device means)."""

    util: dict[int, int] = field(default_factory=dict)
    cpu_sum: float = 0.0
    cpu_n: int = 0
    power_kw: float = 0.0
    rated_kw: float = 0.0
    pdus: int = 0
    heat_kw: float = 0.0
    capacity_kw: float = 0.0
    cdus: int = 0

    def add(self, other: Usage) -> None:
        for permille, n in other.util.items():
            self.util[permille] = self.util.get(permille, 0) + n
        self.cpu_sum += other.cpu_sum
        self.cpu_n += other.cpu_n
        self.power_kw += other.power_kw
        self.rated_kw += other.rated_kw
        self.pdus += other.pdus
        self.heat_kw += other.heat_kw
        self.capacity_kw += other.capacity_kw
        self.cdus += other.cdus

    def to_json(self) -> list:
        return [sorted(self.util.items()), self.cpu_sum, self.cpu_n, self.power_kw, self.rated_kw, self.pdus,
                self.heat_kw, self.capacity_kw, self.cdus]

    @classmethod
    def from_json(cls, data: list) -> Usage:
        util, *rest = data
        return cls({int(k): int(n) for k, n in util}, *rest)


def usage_fields(u: Usage) -> Fields:
    fields: Fields = {}
    n = sum(u.util.values())
    if n:
        ordered = sorted(u.util.items())
        rank, seen, p95 = -(-n * 95 // 100), 0, ordered[-1][0]  # nearest rank, no interpolation
        for permille, count in ordered:
            seen += count
            if seen >= rank:
                p95 = permille
                break
        fields.update(acc_util_mean=sum(k * c for k, c in ordered) / n / 1000, acc_util_p95=p95 / 1000,
                      acc_util_max=ordered[-1][0] / 1000, acc_samples=float(n))
    if u.cpu_n:
        fields["cpu_util_mean"] = u.cpu_sum / u.cpu_n
    if u.pdus:
        fields["power_kw"] = u.power_kw
        if u.rated_kw > 0:
            fields.update(provisioned_kw=u.rated_kw, power_ratio=u.power_kw / u.rated_kw)
    if u.cdus:
        fields["heat_kw"] = u.heat_kw
        if u.capacity_kw > 0:
            fields.update(cdu_capacity_kw=u.capacity_kw, heat_ratio=u.heat_kw / u.capacity_kw)
    return fields
