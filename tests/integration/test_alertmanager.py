"""The real Alertmanager with the generated configuration: a firing CDU alert suppresses the
accelerator alerts in its scope, and its resolution releases them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from dcpulse.services.alertmanager import AlertmanagerServer
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from dcpulse.sinks.alertmanager import AlertmanagerClient, AlertmanagerError
from dcpulse.streams.alertrules import inhibitions, load_rules

pytestmark = pytest.mark.integration

T = TypeVar("T")
SOURCE, TARGET = "cdu_pump_redundancy_lost", "accelerator_temperature_high"


@pytest.fixture
def server(services: LocalServices, settings: Settings) -> AlertmanagerServer:
    """The shared server as `services up` configured it from the rules file."""
    if services.alertmanager is None:
        pytest.skip("alertmanager.enabled is false")
    pack = inhibitions(load_rules(settings.alerts.rules_file))
    assert any(rule.covers({"alertname": SOURCE, "site": "s", "cdu": "c1"}, {"alertname": TARGET, "site": "s",
                                                                             "cdu": "c1"}) for rule in pack)
    return services.alertmanager


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _alert(labels: dict[str, str], starts: datetime, ends: datetime) -> dict:
    return {"labels": labels, "annotations": {"summary": labels["alertname"]},
            "startsAt": _rfc3339(starts), "endsAt": _rfc3339(ends), "generatorURL": "http://dcpulse.test/"}


def _until(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 15.0) -> T:
    """`read()` once `done` holds, or its last value at the timeout (for the assertion to show)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def test_cdu_alert_suppresses_its_accelerators_until_resolved(server: AlertmanagerServer) -> None:
    pipeline = str(uuid.uuid4())  # this test's alerts only, on a shared server
    scope = {"site": "s", "cdu": "c1", "cause": "c1", "pipeline": pipeline}
    source_labels = {"alertname": SOURCE, **scope}
    target_labels = {"alertname": TARGET, **scope, "device": "d1"}
    now = datetime.now(UTC)
    starts, ends = now - timedelta(minutes=1), now + timedelta(minutes=10)

    def by_name() -> dict[str, dict]:
        return {a["labels"]["alertname"]: a for a in client.alerts(filter=[f'pipeline="{pipeline}"'])}

    with AlertmanagerClient(server.settings.url) as client:
        assert client.ready()
        try:
            client.post([_alert(source_labels, starts, ends), _alert(target_labels, starts, ends)])
            muted = _until(by_name, lambda a: a.get(TARGET, {}).get("status", {}).get("state") == "suppressed")
            assert set(muted) == {SOURCE, TARGET}
            assert muted[SOURCE]["status"]["state"] == "active"
            assert muted[TARGET]["status"]["state"] == "suppressed", muted[TARGET]
            assert muted[TARGET]["status"]["inhibitedBy"] == [muted[SOURCE]["fingerprint"]]

            client.post([_alert(source_labels, starts, datetime.now(UTC) - timedelta(seconds=1))])
            released = _until(by_name, lambda a: a.get(TARGET, {}).get("status", {}).get("state") == "active")
            assert set(released) == {TARGET}, "a resolved alert is no longer listed"
            assert released[TARGET]["status"]["state"] == "active", released[TARGET]
            assert released[TARGET]["status"]["inhibitedBy"] == []
        finally:
            past = datetime.now(UTC) - timedelta(seconds=1)
            client.post([_alert(labels, starts, past) for labels in (source_labels, target_labels)])


def test_errors_name_the_url_and_the_answer(server: AlertmanagerServer) -> None:
    with (AlertmanagerClient(server.settings.url) as client,
          pytest.raises(AlertmanagerError, match=r"POST http://.*/api/v2/alerts: 400 .*")):
        client.post([{"labels": {}, "annotations": {}}])
    with AlertmanagerClient("http://127.0.0.1:9") as refused:  # the discard port: nothing listens
        assert not refused.ready()
        with pytest.raises(AlertmanagerError, match=r"GET http://127.0.0.1:9/api/v2/alerts: no answer \(ConnectError"):
            refused.alerts()
