"""`dcpulse demo`: the small preset through producer -> Kafka -> Faust -> sinks -> InfluxDB and back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dcpulse.contract import DeviceKind, Sample, TelemetryBatch, utc_now
from dcpulse.kafka_clients import access
from dcpulse.pipeline import running_pipeline
from dcpulse.producers.publisher import TelemetryPublisher
from dcpulse.services.onboarding import influx_token
from dcpulse.settings import Settings
from dcpulse.sinks.query import read_device_samples


def demo_record() -> TelemetryBatch:
    """A rack agent's batch of one PDU sample with a device id unique to this run, at
    millisecond precision."""
    now = utc_now()
    sample = Sample(hall="h1", row="r01", rack="r01-k01", device=f"pdu-demo-{uuid.uuid4().hex[:10]}",
                    kind=DeviceKind.PDU, seq=0, ts=now.replace(microsecond=now.microsecond // 1000 * 1000),
                    metrics={"power_kw": 42.5, "energy_kwh": 1234.5})
    return TelemetryBatch(site="demo", agent="rack-r01-k01", samples=[sample])


def publish(settings: Settings, record: TelemetryBatch) -> None:
    publisher = TelemetryPublisher(access(settings, "agent"), settings.topics.telemetry)
    try:
        publisher.publish(record)
    finally:
        publisher.close()
    if publisher.failures:
        raise RuntimeError(f"publishing failed: {dict(publisher.failures)}")


def wait_for_samples(
    settings: Settings, device: str, timeout_s: float, check: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Poll InfluxDB (read-only token) until `device` has samples, or raise after timeout_s."""
    token = influx_token(settings, "read")
    start = utc_now() - timedelta(days=1)
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_device_samples(settings.influx.url, token, settings.influx.org,
                                   settings.influx.buckets.raw, device, start)
        if rows:
            return rows
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sample of {device} reached InfluxDB within {timeout_s:.0f}s")
        time.sleep(0.5)


# Injected so the demo shows alerts: a CDU pump fails two minutes before the end of the run, so
# its alert, the accelerator alerts of the racks it cools (suppressed by it) and the loop's
# flow alert are firing when the demo ends.
DEMO_FAULT_BEFORE_END_MIN = 2


def run_small_site(settings: Settings, minutes: int = 8, say: Callable[[str], None] = print,
                   timeout_s: float = 180.0) -> dict[str, Any]:
    """The `small` preset through the whole pipeline: simulate the last `minutes` minutes at max
    speed with a CDU pump failure near the end, let the Faust worker window them and judge the
    alert rules and the sinks land them, read the results and alerts back."""
    from dcpulse.producers.run import run_scenario
    from dcpulse.producers.scenario_args import build_scenario, current_minute
    from dcpulse.producers.simulator import ScenarioSimulator
    from dcpulse.sinks.query import alert_log_query, measurement_query, read_rows

    start = current_minute() - timedelta(minutes=minutes)
    fault_at = max(0, minutes - DEMO_FAULT_BEFORE_END_MIN)
    scenario = build_scenario(["small"], None, [f"cdu_pump_failure:small:cdu-h1-01@{fault_at}m"], 7, start)
    sim = ScenarioSimulator(scenario)
    token = influx_token(settings, "read")
    bucket = settings.influx.buckets.analytics
    site = scenario.sites[0].name
    # Windows close once the site's watermark is `allowed_lateness_s` past their end: all but
    # the last minute or two of the run close.
    expected_last = start + timedelta(minutes=minutes - 2)
    with running_pipeline(settings) as pipeline:
        publisher = TelemetryPublisher(access(settings, "agent"), settings.topics.telemetry)
        stats = run_scenario(sim, minutes * 60.0, None, publisher.publish_raw, publisher.broadcast)
        publisher.close()
        say(f"published {stats.samples:,} samples in {stats.messages:,} agent batches of {minutes} simulated minutes "
            f"(start {start:%H:%M} UTC); "
            "waiting for the windows to land in InfluxDB")
        deadline = time.monotonic() + timeout_s
        while True:
            pipeline.check_alive()
            pue_rows = read_rows(settings.influx.url, token, settings.influx.org,
                                 measurement_query(bucket, "pue", site, start))
            minutes_in = [r for r in pue_rows if r["window"] == "1m" and r["_time"] >= expected_last]
            if len({r["category"] for r in minutes_in}) == 3:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"PUE windows for {site} did not reach InfluxDB within {timeout_s:.0f}s")
            time.sleep(1.0)
        util_rows = read_rows(settings.influx.url, token, settings.influx.org,
                              measurement_query(bucket, "utilisation", site, start))
        alert_rows = read_rows(settings.influx.url, token, settings.influx.org,
                               alert_log_query(settings.influx.buckets.alerts, start, site=site))
        posted = _alertmanager_alerts(settings)
    return {"site": site, "start": start, "pue": [r for r in pue_rows if r["window"] == "1m"],
            "utilisation": util_rows, "truth_pue": sim.sites[0].truth.pue, "samples": stats.samples,
            "alerts": alert_rows, "alertmanager": posted}


def _alertmanager_alerts(settings: Settings, wait_s: float = 3.0) -> list[dict[str, Any]] | None:
    """This pipeline's alerts as Alertmanager lists them (the notifier posts within a second);
    None when Alertmanager is off or unreachable."""
    from dcpulse.sinks.alertmanager import AlertmanagerClient, AlertmanagerError

    if not settings.alertmanager.enabled:
        return None
    time.sleep(wait_s)
    try:
        with AlertmanagerClient(settings.alertmanager.url) as am:
            return am.alerts(filter=[f'pipeline="{settings.topics.prefix}"'])
    except AlertmanagerError:
        return None
