"""Alert rules: the file format, its validation, and the built-in default pack.

A rules file is TOML with one `[[rule]]` table per rule (streams/alert_rules.toml is the default
pack and the reference example). A rule names its input (a device `kind` and a `metric`, which
may be a glob such as `acc*_temp_c`: each matching metric of a device is its own alert; with
`divide_by` the value judged is that metric over another of the same sample), a
condition (`above`, `below`, `equals`, `rate_above` / `rate_below` in units per minute, or
`nodata`: the device has sent nothing for `threshold` seconds of its site's event time), a
`threshold`, an optional `clear` threshold (hysteresis), `for_s`, `keep_firing_for_s`, a
`severity`, extra `labels` and `annotations` templates (`summary`, `description`, `runbook`)
that may use `{site}`, `{hall}`, `{row}`, `{rack}`, `{device}`, `{metric}`, `{value}` and
`{threshold}`. Errors name the rule and the field.

Inhibition is derived from the plant's topology, not written per site: a rule lists the
alertnames it `inhibits` (globs), and the labels a source and its targets must share follow
from where the source rule's input sits (`SCOPE`): a CDU's or leak sensor's alert covers the
racks that CDU cools (`cdu`), a UPS's the racks on its feed (`feed`), a chiller's the whole
site, a rack's its own devices (`rack`). The same derived rules drive dcpulse's own
`inhibited_by` record and the generated Alertmanager configuration.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dcpulse.contract import DeviceKind

DEFAULT_RULES = Path(__file__).with_name("alert_rules.toml")
Condition = Literal["above", "below", "equals", "rate_above", "rate_below", "nodata"]
Severity = Literal["info", "warning", "critical"]
TEMPLATE_FIELDS = frozenset({"site", "hall", "row", "rack", "cdu", "feed", "device", "metric", "value", "threshold"})
ANY = "any"  # a rule of every device kind (derived inputs such as a device's clock)
# Inputs beyond a device's kinds: a whole rack (NoData), a publishing agent, a site's results.
PseudoKind = Literal["any", "rack", "agent", "site"]
# Inputs dcpulse derives ('@' names: no telemetry metric can be called that) and the kinds they exist for.
DERIVED: dict[str, tuple[str, str]] = {
    "@unchanged_s": ("device", "seconds the device's metrics have all kept the same values"),
    "@clock_ahead_s": ("device", "the sample's event time minus its site's watermark, in seconds"),
    "@heat_kw": ("cdu", "heat the CDU's loop carries: flow x cp x (return - supply)"),
    "@dead_letters_per_min": ("agent", "records or samples of the agent dead-lettered per minute of event time"),
    "@pue_15m": ("site", "the site's category-1 PUE over the last 15 minutes (a roll-up)"),
}
# Thresholds a rule may take from the site model instead of its own `threshold`.
SITE_THRESHOLDS = {"pue_target": "the site's PUE target"}


# Where a source alert's cause sits, by its rule's kind: the labels its targets must share.
SCOPE: dict[str, tuple[str, ...]] = {
    "cdu": ("site", "cdu"), "leak_sensor": ("site", "cdu"), "ups": ("site", "feed"),
    "chiller": ("site",), "cooling_tower": ("site",), "dry_cooler": ("site",), "pump": ("site",),
    "facility_meter": ("site",), "rack": ("site", "rack"), "pdu": ("site", "rack"),
}
DEFAULT_SCOPE = ("site", "device")


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and the field."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="alertname; unique in the file")
    kind: DeviceKind | PseudoKind
    metric: str = Field("*", min_length=1, description="metric name or glob (fnmatch); not used by nodata")
    divide_by: str | None = Field(None, description="judge metric / this metric of the same sample (a ratio)")
    condition: Condition
    threshold: float
    threshold_from: Literal["pue_target"] | None = Field(
        None, description="take the threshold from the site model where it knows the site; `threshold` otherwise")
    clear: float | None = Field(None, description="hysteresis: an active alert stays until past this")
    for_s: float = Field(0.0, ge=0)
    keep_firing_for_s: float = Field(0.0, ge=0)
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[Literal["summary", "description", "runbook"], str] = Field(default_factory=dict)
    inhibits: list[Annotated[str, Field(pattern=r"^[a-z0-9_*]+$")]] = Field(
        default_factory=list, description="alertnames (globs) this alert suppresses within its topology scope")

    @model_validator(mode="after")
    def _clear_is_on_the_safe_side(self) -> Rule:
        if self.clear is not None:
            if self.condition in ("above", "rate_above") and self.clear > self.threshold:
                raise ValueError(f"clear {self.clear} must not be above threshold {self.threshold} for '{self.condition}'")
            if self.condition in ("below", "rate_below") and self.clear < self.threshold:
                raise ValueError(f"clear {self.clear} must not be below threshold {self.threshold} for '{self.condition}'")
            if self.condition in ("equals", "nodata"):
                raise ValueError(f"clear has no meaning for '{self.condition}'")
        if self.condition == "nodata" and self.threshold <= 0:
            raise ValueError("a nodata threshold is the seconds of silence: it must be > 0")
        if self.condition == "nodata" and self.kind in (ANY, "agent", "site"):
            raise ValueError(f"nodata is judged per device or rack, not per {self.kind}")
        if self.kind == "rack" and self.condition != "nodata":
            raise ValueError("a rack rule judges its silence: condition must be nodata")
        if self.metric.startswith("@"):
            if self.metric not in DERIVED:
                raise ValueError(f"metric {self.metric!r} is not a derived input; known: {sorted(DERIVED)}")
            where = DERIVED[self.metric][0]
            if where != self.kind and not (where == "device" and self.kind not in ("rack", "agent", "site")):
                raise ValueError(f"metric {self.metric!r} exists for {where} rules, not kind '{self.kind}'")
        elif self.kind in ("agent", "site"):
            raise ValueError(f"a {self.kind} rule judges a derived input: one of "
                             f"{sorted(k for k, (w, _) in DERIVED.items() if w == self.kind)}")
        for key, template in self.annotations.items():
            unknown = _template_fields(template) - TEMPLATE_FIELDS
            if unknown:
                raise ValueError(f"annotation {key!r} uses unknown fields {sorted(unknown)}; "
                                 f"known: {sorted(TEMPLATE_FIELDS)}")
        return self


def _template_fields(template: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    """Rules from TOML text; raises RulesError naming the rule and field at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"rule"}
    if unknown:
        raise RulesError(f"{source}: unknown top-level keys {sorted(unknown)}; rules are [[rule]] tables")
    entries = data.get("rule", [])
    if not isinstance(entries, list) or not entries:
        raise RulesError(f"{source}: no [[rule]] tables")
    rules, seen = [], set()
    for i, entry in enumerate(entries):
        label = f"rule {entry.get('name', f'#{i + 1}')!r}" if isinstance(entry, dict) else f"rule #{i + 1}"
        try:
            rule = Rule.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"field {'.'.join(map(str, e['loc'])) or '(rule)'}: {e['msg']}" for e in exc.errors())
            raise RulesError(f"{source}: {label}: {problems}") from None
        if rule.name in seen:
            raise RulesError(f"{source}: {label}: field name: duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


@dataclass(frozen=True)
class Inhibition:
    """While an alert of rule `source` fires, alerts named by `targets` that share the `equal`
    labels with it are suppressed (still recorded, with `inhibited_by`)."""

    source: str
    targets: tuple[str, ...]
    equal: tuple[str, ...]

    def covers(self, source_labels: dict[str, str], target_labels: dict[str, str]) -> bool:
        return (source_labels.get("alertname") == self.source and source_labels is not target_labels
                and any(fnmatchcase(target_labels.get("alertname", ""), t) for t in self.targets)
                and all(source_labels.get(k, "") == target_labels.get(k, "") for k in self.equal))


def inhibitions(rules: list[Rule]) -> list[Inhibition]:
    """The inhibit rules the rules' topology implies (module docstring)."""
    return [Inhibition(rule.name, tuple(rule.inhibits), SCOPE.get(str(rule.kind), DEFAULT_SCOPE))
            for rule in rules if rule.inhibits]


def load_rules(path: Path | None = None) -> list[Rule]:
    """The rules of `path`, or the default pack."""
    path = path or DEFAULT_RULES
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"{path}: cannot be read: {exc.strerror}") from exc
    return parse_rules(text, str(path))
