"""The generated alertmanager.yml: route, receiver and the inhibit rules from the alert rules."""

from __future__ import annotations

import re

import pytest
import yaml

from dcpulse.services.alertmanager import duration, glob_regex, render_config
from dcpulse.settings import AlertmanagerSettings
from dcpulse.streams.alertrules import Inhibition

CDU = Inhibition("cdu_pump_redundancy_lost", ("accelerator_*", "rack_inlet_*"), ("site", "cdu"))


def _config(inhibitions: tuple[Inhibition, ...] = (CDU,), **settings: object) -> dict:
    return yaml.safe_load(render_config(AlertmanagerSettings(**settings), list(inhibitions)))


def test_route_groups_by_site_and_cause_with_the_settings_timers() -> None:
    route = _config(group_wait_s=5, group_interval_s=30, repeat_interval_s=3600)["route"]
    assert route == {"receiver": "operators", "group_by": ["site", "cause"],
                     "group_wait": "5s", "group_interval": "30s", "repeat_interval": "3600s"}


def test_receiver_has_a_webhook_only_when_configured() -> None:
    assert _config()["receivers"] == [{"name": "operators"}]
    hooked = _config(webhook_url="http://127.0.0.1:5001/hook?team=ops&x=1")
    assert hooked["receivers"] == [{"name": "operators", "webhook_configs": [
        {"url": "http://127.0.0.1:5001/hook?team=ops&x=1", "send_resolved": True}]}]


def test_inhibition_becomes_source_and_target_matchers_with_equal_labels() -> None:
    [rule] = _config()["inhibit_rules"]
    assert rule == {
        "source_matchers": ['alertname="cdu_pump_redundancy_lost"'],
        "target_matchers": ['alertname=~"accelerator_.*|rack_inlet_.*"'],
        "equal": ["site", "cdu"],
    }


def test_no_inhibitions_no_rules() -> None:
    assert _config(())["inhibit_rules"] == []


def test_glob_translation_matches_what_fnmatch_would_anchored() -> None:
    regex = re.compile(glob_regex(("accelerator_*", "rack_*_high", "coolant_leak")))
    # Alertmanager anchors the regex: fullmatch is what it applies.
    for name in ("accelerator_temperature_high", "accelerator_", "rack_inlet_high", "coolant_leak"):
        assert regex.fullmatch(name), name
    for name in ("cdu_accelerator_x", "rack_inlet_low", "coolant_leak_2", "xcoolant_leak"):
        assert not regex.fullmatch(name), name


@pytest.mark.parametrize("glob", ["accel.*", "a|b", 'a"b', "Accel_*", ""])
def test_globs_outside_the_rule_alphabet_are_refused(glob: str) -> None:
    with pytest.raises(ValueError, match="alertname glob"):
        glob_regex((glob,))


@pytest.mark.parametrize(("seconds", "text"), [(30.0, "30s"), (0, "0s"), (14_400.0, "14400s"), (0.5, "500ms")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text
