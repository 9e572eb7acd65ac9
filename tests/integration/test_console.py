"""The operator console in a real headless Chromium (Debian's, driven by Playwright): a pipeline
in a sandbox with the small site simulated into it, `dcpulse console` as its own process.

- every view renders, without console errors, and no request leaves 127.0.0.1; screenshots go
  to test-artifacts/ (or $DCPULSE_TEST_ARTIFACTS);
- with the simulation paused, a hot spot then injected into the running site turns its rack red
  and brings its alert onto the open page within SHOW_S seconds, without a reload;
- a device name carrying markup is shown as text, on the server-rendered page and in live updates.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.producers.run import run_scenario
from dcpulse.producers.scenario_args import build_scenario, current_minute
from dcpulse.producers.simulator import ScenarioSimulator
from dcpulse.services.manager import LocalServices
from dcpulse.settings import Settings
from tests.integration.support import isolated

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("DCPULSE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
HOT_RACK, HOT_AT_MIN, RUN_MIN, PAUSE_AT_MIN = "h1-r02-k01", 4, 6, 3.5
SHOW_S = 45  # the pipeline's latency (a few seconds) plus the alert's `for` of 60 s of event time
MARKUP = '<img src=x onerror="window.__xss=1">'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"console exited: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"console not listening on {port}")


@pytest.fixture(scope="module")
def console(services: LocalServices, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    if CHROMIUM is None:
        pytest.skip("no chromium (./run test installs Debian's package)")
    tmp = tmp_path_factory.mktemp("console")
    gate = threading.Event()
    with isolated(services, settings, "console") as sandboxed, running_pipeline(sandboxed, log_dir=tmp) as pipeline:
        start = current_minute() - timedelta(minutes=RUN_MIN + 1)  # all in the past: the console reads up to now
        sim = ScenarioSimulator(build_scenario(["small"], None, [f"hot_spot:small:{HOT_RACK}@{HOT_AT_MIN}m+5m"],
                                               7, start))
        publisher = TelemetryPublisher(access(sandboxed, "admin"), sandboxed.topics.telemetry)
        pause_ms = int((start + timedelta(minutes=PAUSE_AT_MIN)).timestamp() * 1000)

        def send(key: bytes, value: bytes, ts_ms: int) -> None:
            if ts_ms >= pause_ms:
                gate.wait()  # the rest of the run, the hot spot with it, waits for the test
            publisher.publish_raw(key, value, ts_ms)

        feeder = threading.Thread(target=run_scenario, args=(sim, RUN_MIN * 60.0, None, send, publisher.broadcast),
                                  daemon=True)
        feeder.start()
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "dcpulse.cli", "console", "--port", str(port)],
                                env={**os.environ, "DCPULSE_CONSOLE__REFRESH_S": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_port(port, proc)
            yield f"http://127.0.0.1:{port}", gate, sandboxed, pipeline
        finally:
            gate.set()
            proc.terminate()
            proc.wait(timeout=10)
            feeder.join(timeout=60)
            publisher.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Watched:
    """A page with every request's host and every console error recorded."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.hosts: set[str] = set()
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.hosts.add(urlparse(request.url).hostname or request.url))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def _until(check, timeout_s: float) -> float:
    """Seconds until `check()` is true; raises AssertionError after timeout_s."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.25)
    return time.monotonic() - started


def _rack_class(page, rack: str) -> str:
    return page.get_attribute(f'[data-rack="{rack}"]', "class") or ""


def test_a_hot_spot_turns_its_rack_red_and_raises_its_alert_on_the_open_page(console, browser) -> None:
    url, gate, _, pipeline = console
    watched = Watched(browser)
    page = watched.page
    page.goto(f"{url}/site/small?metric=inlet")
    # Before the hot spot: every rack has an inlet value, none of them red.
    _until(lambda: (pipeline.check_alive() or True) and _rack_class(page, HOT_RACK) not in ("", "rack none"), 90)
    assert "bad" not in _rack_class(page, HOT_RACK)
    watched.shot("site-before")
    gate.set()
    red_after = _until(lambda: "bad" in _rack_class(page, HOT_RACK), SHOW_S)
    alert_after = _until(lambda: "rack_inlet_above" in (page.text_content("#alerts") or ""), SHOW_S)
    watched.shot("site-hot-spot")
    assert page.text_content("#hottest") == HOT_RACK
    print(f"rack red after {red_after:.1f} s, alert on the page after {red_after + alert_after:.1f} s")
    assert watched.hosts == {"127.0.0.1"}
    assert watched.errors == []


@pytest.mark.parametrize("path, name, expect", [
    ("/", "national", "small"),
    ("/site/small?metric=util", "site-util", HOT_RACK),
    ("/site/small?metric=power", "site-power", HOT_RACK),
    ("/site/small?metric=heat", "site-heat", "cdu-h1-01"),
    ("/site/small?metric=alert", "site-alert", HOT_RACK),
    (f"/site/small/rack/{HOT_RACK}", "rack", f"{HOT_RACK}-s01"),
    ("/alerts", "alerts", "Active"),
])
def test_every_view_renders_live_without_errors_or_outside_requests(console, browser, path, name, expect) -> None:
    url = console[0]
    watched = Watched(browser)
    watched.page.goto(url + path)
    _until(lambda: "live" in (watched.page.text_content("#live") or ""), 15)  # the event stream delivered
    assert expect in (watched.page.text_content("main") or "")
    watched.shot(name)
    assert watched.hosts == {"127.0.0.1"}
    assert watched.errors == []


def test_a_device_name_carrying_markup_is_shown_as_text(console, browser, services: LocalServices) -> None:
    url, _, sandboxed, _ = console
    escaped = MARKUP.replace(" ", r"\ ").replace("=", r"\=").replace(",", r"\,")
    line = (f"alert,alertname=probe,severity=critical,site=small,device={escaped},fingerprint=probe1,cause=x "
            f'state="firing",old="pending",value=1,resolved=false,flapping=false,inhibited_by="",'
            f'summary="{MARKUP.replace(chr(34), chr(92) + chr(34))}" {time.time_ns()}')
    with InfluxDBClient(url=sandboxed.influx.url, token=services.credentials().admin_token,
                        org=sandboxed.influx.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=sandboxed.influx.buckets.alerts, record=line)
    watched = Watched(browser)
    watched.page.goto(f"{url}/alerts")
    assert MARKUP in (watched.page.text_content("#active") or "")  # server-rendered
    _until(lambda: "live" in (watched.page.text_content("#live") or ""), 15)
    time.sleep(1.5)  # a live update has replaced the rows
    assert MARKUP in (watched.page.text_content("#active") or "")
    assert watched.page.evaluate("window.__xss") is None
    assert watched.page.query_selector("#active img") is None
    watched.shot("markup")
