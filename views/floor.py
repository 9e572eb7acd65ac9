"""A site's floor for the console (pure): halls, rows and racks from the site model, each rack with
the CDU whose loop cools it, and the colour a rack gets for the metric an operator picks.

Sites the presets define are drawn from their model (`producers/plant.py` `hall_layout`, the same
layout the simulator publishes); a site dcpulse has no model of is drawn from the racks its
results name, without CDU links.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcpulse.producers.plant import hall_layout
from dcpulse.producers.sitemodel import SiteSpec

# What a rack can be coloured by: (label, unit, (amber from, red from)); utilisation is a scale.
METRICS: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "inlet": ("inlet temperature", "°C", (27.0, 32.0)),  # ASHRAE recommended max, A1 allowable
    "util": ("accelerator utilisation", "", None),
    "power": ("power / provisioned", "", (0.8, 0.95)),
    "heat": ("heat / CDU capacity", "", (0.8, 1.0)),
    "alert": ("worst alert", "", None),
}
SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}
ACCELERATOR_BANDS = (85.0, 88.0)  # the alert pack's temperature warning and slowdown thresholds


@dataclass
class Row:
    name: str
    racks: list[tuple[str, str | None]] = field(default_factory=list)  # (rack, its CDU)


@dataclass
class Hall:
    name: str
    cooling: str
    rows: list[Row] = field(default_factory=list)
    cdus: dict[str, list[str]] = field(default_factory=dict)  # CDU -> the racks it cools


def floor_from_model(spec: SiteSpec) -> list[Hall]:
    halls = []
    for hall_spec in spec.halls:
        lay = hall_layout(hall_spec)
        hall = Hall(hall_spec.name, hall_spec.cooling)
        rows: dict[str, Row] = {}
        for i, rack in enumerate(lay.rack_ids):
            cdu = lay.cdu_ids[int(lay.rack_cdu[i])] if lay.cdu_ids else None
            rows.setdefault(lay.rack_row[i], Row(lay.rack_row[i])).racks.append((rack, cdu))
            if cdu is not None:
                hall.cdus.setdefault(cdu, []).append(rack)
        hall.rows = list(rows.values())
        halls.append(hall)
    return halls


def floor_from_racks(racks: dict[str, str | None]) -> list[Hall]:
    """Rack -> hall, for a site without a model: one row per hall, racks in name order."""
    halls: dict[str, Hall] = {}
    for rack, hall in sorted(racks.items()):
        name = hall or "?"
        halls.setdefault(name, Hall(name, "unknown", [Row(name)])).rows[0].racks.append((rack, None))
    return list(halls.values())


def colour(metric: str, value: float | None) -> str:
    """A rack's CSS class for `value` of `metric`: none, ok, warn, bad, or u0-u4 (utilisation)."""
    if value is None:
        return "none"
    if metric == "util":
        return f"u{min(4, max(0, int(value * 5)))}"
    if metric == "alert":
        return {0: "ok", 1: "ok", 2: "warn", 3: "bad"}.get(int(value), "bad")
    return band(value, *METRICS[metric][2])  # type: ignore[misc]


def band(value: float | None, amber: float, red: float) -> str:
    if value is None:
        return "none"
    return "bad" if value >= red else "warn" if value >= amber else "ok"


def hottest(values: dict[str, float]) -> str | None:
    """The rack with the highest value (ties: the first by name)."""
    return max(sorted(values), key=lambda rack: values[rack]) if values else None
