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
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dcpulse.contract import DeviceKind

DEFAULT_RULES = Path(__file__).with_name("alert_rules.toml")
Condition = Literal["above", "below", "equals", "rate_above", "rate_below", "nodata"]
Severity = Literal["info", "warning", "critical"]
TEMPLATE_FIELDS = frozenset({"site", "hall", "row", "rack", "device", "metric", "value", "threshold"})


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and the field."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="alertname; unique in the file")
    kind: DeviceKind
    metric: str = Field("*", min_length=1, description="metric name or glob (fnmatch); not used by nodata")
    divide_by: str | None = Field(None, description="judge metric / this metric of the same sample (a ratio)")
    condition: Condition
    threshold: float
    clear: float | None = Field(None, description="hysteresis: an active alert stays until past this")
    for_s: float = Field(0.0, ge=0)
    keep_firing_for_s: float = Field(0.0, ge=0)
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[Literal["summary", "description", "runbook"], str] = Field(default_factory=dict)

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


def load_rules(path: Path | None = None) -> list[Rule]:
    """The rules of `path`, or the default pack."""
    path = path or DEFAULT_RULES
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"{path}: cannot be read: {exc.strerror}") from exc
    return parse_rules(text, str(path))
