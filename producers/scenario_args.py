"""Command-line scenario building: presets, scenario files and `--fault` specs (pure)."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from dcpulse.producers.run import parse_duration
from dcpulse.producers.sitemodel import FaultSpec, Scenario, load_preset, load_scenario

_FAULT = re.compile(
    r"^(?P<kind>[a-z_]+)(?::(?P<site>[^:@=]+)(?::(?P<target>[^@=]+))?)?"
    r"(?:@(?P<start>[\d.]+[a-z]*)(?:\+(?P<duration>[\d.]+[a-z]*))?)?(?:=(?P<magnitude>-?[\d.]+))?$"
)
FAULT_SYNTAX = "KIND[:SITE[:TARGET]][@START[+DURATION]][=MAGNITUDE], e.g. cdu_pump_failure:small@2m+3m"


def parse_fault(text: str, default_site: str) -> FaultSpec:
    match = _FAULT.match(text.strip())
    if not match:
        raise ValueError(f"bad --fault {text!r}; expected {FAULT_SYNTAX}")
    parts = match.groupdict()
    spec: dict[str, object] = {"kind": parts["kind"], "site": parts["site"] or default_site,
                               "target": parts["target"]}
    if parts["start"]:
        spec["start_s"] = parse_duration(parts["start"])
    if parts["duration"]:
        spec["duration_s"] = parse_duration(parts["duration"])
    if parts["magnitude"]:
        spec["magnitude"] = float(parts["magnitude"])
    return FaultSpec.model_validate(spec)


def current_minute() -> datetime:
    """Live runs start now (so raw data lands inside InfluxDB's retention), floored to the minute."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def resolve_start(start: str | None, scenario_file: Path | None, now: datetime) -> datetime | None:
    """The simulated start `simulate` runs from: `--start` (an RFC 3339 time, or 'now'); without
    one, the scenario file's `start` if it sets one; otherwise now (live runs land inside
    InfluxDB's retention). None: the file's own start applies."""
    if start == "now":
        return now
    if start is not None:
        at = datetime.fromisoformat(start.replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise ValueError("--start needs a time zone, e.g. 2026-07-01T00:00:00Z")
        return at
    if scenario_file is not None and "start" in tomllib.loads(scenario_file.read_text()):
        return None
    return now


def build_scenario(presets: list[str], scenario_file: Path | None, faults: list[str],
                   seed: int | None, start: datetime | None) -> Scenario:
    """A scenario file, or presets side by side; CLI faults, seed and start override the file.

    Without a start from the file or the caller, the model's fixed default applies, which is
    what makes a run reproducible byte for byte."""
    if scenario_file is not None:
        base = load_scenario(scenario_file)
        sites = base.sites + [load_preset(p) for p in presets]
    else:
        base = None
        sites = [load_preset(p) for p in presets or ["small"]]
    data = base.model_dump() if base else {}
    data["sites"] = sites
    parsed = [parse_fault(f, sites[0].name) for f in faults]
    data["faults"] = [*(base.faults if base else []), *parsed]
    if seed is not None:
        data["seed"] = seed
    if start is not None:
        data["start"] = start
    return Scenario.model_validate(data)
