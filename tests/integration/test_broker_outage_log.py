"""A 10 s broker outage is said once in the stream worker's log, then summarised: it wrote over
800 ERROR lines before (the Kafka clients' reconnect loop, every attempt logged)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from dcpulse.pipeline import running_pipeline
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import isolated

pytestmark = pytest.mark.integration
OUTAGE_S = 10
ERROR_LINE = re.compile(r"\bERROR\b|\"level\": \"error\"", re.IGNORECASE)


def test_a_short_broker_outage_is_logged_once_then_summarised(services: LocalServices, settings: Settings,
                                                             tmp_path: Path) -> None:
    with isolated(services, settings, "outage-log") as sandboxed, \
            running_pipeline(sandboxed, log_dir=tmp_path) as pipeline:
        log = tmp_path / "streams-1.log"
        before = log.read_text(errors="replace").count("\n")
        services.down(lambda _m: None, only=["kafka"])
        time.sleep(OUTAGE_S)
        services.up(lambda _m: None)
        time.sleep(20)  # reconnected; anything still queued is written
        pipeline.check_alive()
        lines = log.read_text(errors="replace").splitlines()[before:]
    errors = [line for line in lines if ERROR_LINE.search(line)]
    print(f"{len(errors)} error lines of {len(lines)} lines during and after a {OUTAGE_S} s outage")
    assert len(errors) <= 25, "\n".join(errors[:40])
