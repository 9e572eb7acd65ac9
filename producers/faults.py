"""Fault injection: what each scheduled fault does to the plant and to the agents this tick.

Plant faults change physics (their signatures follow from it): a CDU pump failure cuts flow,
so delta-T, return and chip temperatures rise until the accelerators throttle; a leak drains
loop pressure and reservoir level and trips the leak sensor; a clogging filter raises CDU
differential pressure and slowly cuts flow; a chiller trip lets the chilled loop drift up; a
hot spot lifts one rack's inlet air. Agent faults change what is published: stuck sensors,
dropouts, clock skew, counter resets and malformed messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcpulse.producers.plant import HallFaults, HallLayout
from dcpulse.producers.sitemodel import FaultSpec

DEFAULT_MAGNITUDE = {
    "cdu_pump_failure": 0.35,  # remaining flow share
    "filter_clog": 1.5,  # extra differential pressure (x baseline) reached at the end
    "hot_spot": 10.0,  # K over the aisle
    "clock_skew": 120.0,  # seconds the agent's clock runs ahead
    "malformed": 5.0,  # bad inputs per tick
}
CDU_FAULTS = {"cdu_pump_failure", "coolant_leak", "filter_clog"}


@dataclass
class TickFaults:
    halls: list[HallFaults]
    chiller_tripped: bool = False
    dropout: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)
    skew_s: dict[str, float] = field(default_factory=dict)
    counter_resets: set[str] = field(default_factory=set)
    malformed: int = 0
    active: list[str] = field(default_factory=list)


def default_target(kind: str, layouts: list[HallLayout]) -> str:
    """First CDU for loop faults, first rack for hot spots, first server for agent faults."""
    if kind in CDU_FAULTS:
        for lay in layouts:
            if lay.cdu_ids:
                return lay.cdu_ids[0]
        raise ValueError(f"{kind} needs a liquid-cooled hall with CDUs")
    if kind == "hot_spot":
        return layouts[0].rack_ids[0]
    if kind == "counter_reset":
        return f"pdu-{layouts[0].rack_ids[0]}"
    return layouts[0].server_ids[0]


def magnitude(fault: FaultSpec) -> float:
    return fault.magnitude if fault.magnitude is not None else DEFAULT_MAGNITUDE.get(fault.kind, 1.0)


def faults_at(faults: list[FaultSpec], layouts: list[HallLayout], t_s: float, dt_s: float) -> TickFaults:
    tick = TickFaults(halls=[HallFaults.healthy(lay) for lay in layouts])
    for fault in faults:
        if not fault.active(t_s):
            continue
        target = fault.target or default_target(fault.kind, layouts)
        tick.active.append(f"{fault.kind}:{target}")
        m = magnitude(fault)
        if fault.kind in CDU_FAULTS:
            h, i = _find(layouts, target, "cdu_ids")
            hf = tick.halls[h]
            if fault.kind == "cdu_pump_failure":
                hf.cdu_flow[i] *= m
                hf.cdu_pumps_failed[i] += 1
            elif fault.kind == "coolant_leak":
                hf.cdu_leaking[i] = True
                hf.cdu_flow[i] *= 0.95
            else:  # filter_clog: resistance builds over the fault's duration
                progress = (t_s - fault.start_s) / fault.duration_s
                hf.cdu_dp[i] *= 1.0 + m * progress
                hf.cdu_flow[i] *= 1.0 - 0.3 * progress
        elif fault.kind == "hot_spot":
            h, i = _find(layouts, target, "rack_ids")
            tick.halls[h].rack_inlet_k[i] += m
        elif fault.kind == "chiller_trip":
            tick.chiller_tripped = True
        elif fault.kind == "sensor_dropout":
            tick.dropout.add(target)
        elif fault.kind == "stuck_sensor":
            tick.stuck.add(target)
        elif fault.kind == "clock_skew":
            tick.skew_s[target] = m
        elif fault.kind == "counter_reset":
            if t_s < fault.start_s + dt_s:  # a reset is an event: its first tick only
                tick.counter_resets.add(target)
        elif fault.kind == "malformed":
            tick.malformed += int(m)
    return tick


def _find(layouts: list[HallLayout], target: str, attr: str) -> tuple[int, int]:
    for h, lay in enumerate(layouts):
        ids = getattr(lay, attr)
        if target in ids:
            return h, ids.index(target)
    raise ValueError(f"fault target {target!r} is not one of this site's {attr.removesuffix('_ids')}s")


def validate_targets(faults: list[FaultSpec], site: str, layouts: list[HallLayout]) -> None:
    """Fail at start-up, not mid-run, on a fault that names a device the site lacks."""
    for fault in faults:
        if fault.site != site:
            continue
        target = fault.target or default_target(fault.kind, layouts)
        if fault.kind in CDU_FAULTS:
            _find(layouts, target, "cdu_ids")
        elif fault.kind == "hot_spot":
            _find(layouts, target, "rack_ids")
