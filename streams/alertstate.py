"""One alert's state machine per (rule, entity), evaluated in event time (pure).

Each evaluation gives the rule's condition for the entity at an event time: `True` (breached),
`False` (clear) or `None` (no data, which a NoData rule turns into its own condition before it
gets here). States, after Prometheus' alerting rules:

- `inactive` -> `pending` when the condition starts (or straight to `firing` with `for` 0);
- `pending` -> `firing` once it has held for `for`; back to `inactive` when it stops, with no
  notification;
- `firing` -> `keep_firing` when the condition stops and `keep_firing_for` > 0; the condition
  returning resets the countdown; -> `inactive` (a resolution) when it has run out;
- flapping (the Nagios and Kapacitor method): over the last `history` evaluations, each change
  of the condition weighted linearly from 0.8 (oldest) to 1.2 (newest), the share of weighted
  changes above `flap_high` marks the alert flapping and below `flap_low` ends it (judged once
  `min_history` evaluations are in, over up to `history`). A flapping
  alert is one firing alert with a `flapping` label, not a storm: it fires at once and is not
  resolved until the flapping has ended.

Hysteresis is in the condition (`breached`): a threshold to enter and a clear threshold to
leave, so a value wandering between the two keeps the alert where it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

State = Literal["inactive", "pending", "firing", "keep_firing"]
ACTIVE: frozenset[State] = frozenset({"pending", "firing", "keep_firing"})


@dataclass(frozen=True, slots=True)
class Timing:
    """A rule's timing; all durations in milliseconds of event time."""

    for_ms: int = 0
    keep_firing_for_ms: int = 0
    history: int = 21
    min_history: int = 11  # flapping is judged from this many evaluations on (Nagios waits for all 21)
    flap_high: float = 0.5
    flap_low: float = 0.25


@dataclass(frozen=True, slots=True)
class AlertState:
    state: State = "inactive"
    since_ms: int | None = None  # when the current state began (pending: the condition's start)
    cleared_ms: int | None = None  # keep_firing: when the condition stopped
    levels: tuple[bool, ...] = ()  # the condition at the last `history` evaluations, oldest first
    flapping: bool = False

    @property
    def quiet(self) -> bool:
        """Inactive with no breach in its history: a false condition leaves it as it is, so it
        need not be stored (the engine keeps only the others)."""
        return self.state == "inactive" and not self.flapping and not any(self.levels)

    def to_json(self) -> list:
        return [self.state, self.since_ms, self.cleared_ms, "".join("1" if x else "0" for x in self.levels),
                self.flapping]

    @classmethod
    def from_json(cls, data: list) -> AlertState:
        state, since, cleared, levels, flapping = data
        return cls(state, since, cleared, tuple(c == "1" for c in levels), bool(flapping))


@dataclass(frozen=True, slots=True)
class Transition:
    """A change worth recording: every state change, and flapping starting or ending."""

    at_ms: int
    old: State
    new: State
    flapping: bool
    resolved: bool = False  # firing or keep_firing -> inactive: send the resolution


@dataclass(slots=True)
class Step:
    state: AlertState
    transitions: list[Transition] = field(default_factory=list)


def breached(value: float, threshold: float, clear: float | None, above: bool, active: bool) -> bool:
    """The condition with hysteresis: an inactive alert starts past `threshold`; an active one
    stays until the value is back past `clear` (the threshold itself when no clear is given)."""
    limit = clear if active and clear is not None else threshold
    if above:
        return value > limit if not active else value >= limit
    return value < limit if not active else value <= limit


def flap_share(levels: tuple[bool, ...]) -> float:
    """Weighted share of changes between consecutive levels (Nagios): the change into level i
    of n is weighted 0.8 + 0.4 * (i - 1) / (n - 2), so newer changes count more."""
    n = len(levels)
    if n < 3:
        return 0.0
    changes = 0.0
    for i in range(1, n):
        if levels[i] != levels[i - 1]:
            changes += 0.8 + 0.4 * (i - 1) / (n - 2)
    return changes / (n - 1)


def evaluate(current: AlertState, condition: bool, at_ms: int, timing: Timing) -> Step:
    """The state after one evaluation at event time `at_ms` (never earlier than the last)."""
    levels = (current.levels + (condition,))[-timing.history:]
    # Judged before the history is full, so a rule without `for` does not notify ten times first.
    share = flap_share(levels) if len(levels) >= min(timing.min_history, timing.history) else 0.0
    flapping = share > timing.flap_high if not current.flapping else share >= timing.flap_low
    s = replace(current, levels=levels, flapping=flapping)
    old = current.state
    hold = condition or flapping  # a flapping alert keeps firing until it has calmed down

    if old == "inactive":
        if hold:
            firing = timing.for_ms == 0 or flapping
            s = replace(s, state="firing" if firing else "pending", since_ms=at_ms, cleared_ms=None)
    elif old == "pending":
        if not hold:
            s = replace(s, state="inactive", since_ms=at_ms)
        elif flapping or at_ms - (current.since_ms or at_ms) >= timing.for_ms:
            s = replace(s, state="firing", since_ms=at_ms)
    elif old == "firing":
        if not hold:
            if timing.keep_firing_for_ms > 0:
                s = replace(s, state="keep_firing", cleared_ms=at_ms)
            else:
                s = replace(s, state="inactive", since_ms=at_ms)
    else:  # keep_firing
        if hold:
            s = replace(s, state="firing", cleared_ms=None)
        elif at_ms - (current.cleared_ms or at_ms) >= timing.keep_firing_for_ms:
            s = replace(s, state="inactive", since_ms=at_ms, cleared_ms=None)

    step = Step(s)
    if s.state != old or s.flapping != current.flapping:
        step.transitions.append(Transition(at_ms, old, s.state, s.flapping,
                                           resolved=old in ("firing", "keep_firing") and s.state == "inactive"))
    return step
