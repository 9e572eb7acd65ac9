"""No false alerts: an hour of every preset without faults, through the stream worker's own
stages at full speed (the offline reference; the determinism matrix in
tests/integration/test_windows_e2e.py shows the live pipeline gives the same transitions), raises
no alert transition at all with the default pack, pending included. The hour is the afternoon
(13:30-14:30 UTC), when the sites run warmest and the chillers trim free cooling.

shaoguan-tencent is left out: its 125,000 servers publish about 45 million samples an hour,
over an hour of one core here; its halls are the same models as the presets tested."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dcpulse.producers.publisher import InMemoryTopic
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.producers.sitemodel import preset_names
from dcpulse.streams.alertrules import load_rules
from dcpulse.streams.offline import reference_alerts

AFTERNOON = datetime(2026, 7, 1, 13, 30, tzinfo=UTC)


@pytest.mark.parametrize("preset", [p for p in preset_names() if p != "shaoguan-tencent"])
def test_an_hour_of_a_preset_without_faults_raises_no_alert(preset: str) -> None:
    topic = InMemoryTopic(1)
    sim = ScenarioSimulator(build_scenario([preset], None, [], 7, AFTERNOON))
    run_scenario(sim, 3600.0, None, topic.publish_raw, topic.broadcast)
    events = reference_alerts(topic.records, 1, load_rules())
    assert [(e.rule, e.labels["device"], e.to_json()["at"], e.transition.new) for e in events][:10] == []
