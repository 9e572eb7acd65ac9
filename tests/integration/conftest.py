"""Session fixture: the real Kafka and InfluxDB, started through the project's own `services up`.

Servers this session started are stopped at the end; servers that were already running (a
developer's `dcpulse services up`) are left running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def services(settings: Settings, pytestconfig: pytest.Config) -> Iterator[LocalServices]:
    local = LocalServices(settings)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(message: str) -> None:
        # A first run builds influxd for many minutes: show progress live, past pytest's capture.
        with capture.global_and_fixture_disabled():
            print(f"[services] {message}", flush=True)

    started = local.up(say)
    yield local
    if started:
        local.down(say, only=started)
        servers = {"kafka": local.kafka.process, "influxdb": local.influx.process}
        if local.alertmanager is not None:
            servers["alertmanager"] = local.alertmanager.process
        left = [name for name in started if servers[name].is_running()]
        assert not left, f"`services down` left {left} running"
