"""The per-(rule, entity) alert state machine (streams/alertstate.py), in event time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcpulse.streams.alertstate import AlertState, Timing, Transition, breached, evaluate, flap_share

S = 1000  # ms


def run(conditions: list[bool], timing: Timing, every_ms: int = 10 * S) -> tuple[AlertState, list[Transition]]:
    state, out = AlertState(), []
    for i, condition in enumerate(conditions):
        step = evaluate(state, condition, i * every_ms, timing)
        state = step.state
        out += step.transitions
    return state, out


def states(transitions: list[Transition]) -> list[tuple[int, str]]:
    return [(t.at_ms // S, t.new) for t in transitions]


def test_pending_fires_once_the_condition_has_held_for_its_for() -> None:
    final, moves = run([False, True, True, True, True], Timing(for_ms=30 * S))
    assert states(moves) == [(10, "pending"), (40, "firing")]
    assert final.state == "firing"


def test_a_pending_alert_whose_condition_stops_goes_back_without_a_resolution() -> None:
    _, moves = run([True, True, False], Timing(for_ms=60 * S))
    assert states(moves) == [(0, "pending"), (20, "inactive")]
    assert not any(t.resolved for t in moves)


def test_for_zero_fires_at_once_and_resolves_when_the_condition_stops() -> None:
    _, moves = run([True, False], Timing())
    assert states(moves) == [(0, "firing"), (10, "inactive")]
    assert [t.resolved for t in moves] == [False, True]


def test_keep_firing_holds_a_resolution_and_the_condition_returning_resets_it() -> None:
    timing = Timing(keep_firing_for_ms=30 * S)
    _, moves = run([True, False, False, True, False, False, False, False], timing)
    assert states(moves) == [(0, "firing"), (10, "keep_firing"), (30, "firing"), (40, "keep_firing"),
                             (70, "inactive")]
    assert moves[-1].resolved


def test_hysteresis_keeps_an_active_alert_until_the_clear_threshold() -> None:
    values = [84.0, 85.5, 84.6, 84.1, 83.9, 84.6]
    active, seen = False, []
    for value in values:
        active = breached(value, 85.0, 84.0, above=True, active=active)
        seen.append(active)
    assert seen == [False, True, True, True, False, False]
    assert breached(0.2, 0.3, 0.4, above=False, active=False) and not breached(0.45, 0.3, 0.4, above=False, active=True)


def test_an_oscillating_condition_gives_one_flapping_alert_not_a_storm() -> None:
    conditions = [i % 2 == 0 for i in range(60)] + [False] * 30
    _, moves = run(conditions, Timing(for_ms=20 * S))
    firing = [t for t in moves if t.new == "firing"]
    assert len(firing) == 1 and firing[0].flapping
    resolved = [t for t in moves if t.resolved]
    assert len(resolved) == 1 and not resolved[0].flapping and resolved[0].at_ms > 60 * 10 * S
    # Without flap detection the same input would have fired and resolved many times.
    _, naive = run(conditions, Timing(history=2))
    assert sum(t.resolved for t in naive) > 20


def test_flap_share_weights_newer_changes_more() -> None:
    assert flap_share((False,) * 21) == 0.0
    assert flap_share(tuple(i % 2 == 0 for i in range(21))) == pytest.approx(1.0)
    old_change = (True,) + (False,) * 20
    new_change = (False,) * 20 + (True,)
    assert flap_share(new_change) > flap_share(old_change)


@given(st.lists(st.booleans(), max_size=80), st.integers(0, 5), st.integers(0, 5))
def test_transitions_are_changes_and_a_resolution_always_follows_firing(conditions, for_ticks, keep_ticks) -> None:
    timing = Timing(for_ms=for_ticks * 10 * S, keep_firing_for_ms=keep_ticks * 10 * S)
    final, moves = run(conditions, timing)
    previous = "inactive"
    for t in moves:
        assert t.old == previous
        previous = t.new
        if t.resolved:
            assert t.old in ("firing", "keep_firing") and t.new == "inactive"
    assert previous == final.state
    # The same evaluations give the same transitions: state is a pure function of its inputs.
    assert run(conditions, timing) == (final, moves)
