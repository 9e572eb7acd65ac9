"""Alert delivery to Alertmanager (sinks/notifier.py), without a server: a recording stand-in
client that can be taken down to simulate an outage, and a wall clock the test moves."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dcpulse.settings import AlertmanagerSettings
from dcpulse.sinks.alertmanager import AlertmanagerError
from dcpulse.sinks.notifier import HOLD_RESENDS, Notifier, am_alert, am_labels
from dcpulse.streams.alerting import fingerprint
from dcpulse.streams.validation import epoch_ms, iso_ms

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
RESEND_S = 60.0
PIPELINE = "dcpulse-test"
LABELS = {"alertname": "accelerator_temperature_high", "severity": "warning", "site": "s", "device": "srv-1",
          "kind": "server", "hall": "h1", "rack": "r1", "cdu": "c1", "metric": "acc0_temp_c"}
OTHER = {**LABELS, "device": "srv-2"}


class RecordingAlertmanager:
    """Records each post (a list of alerts); raises AlertmanagerError while `down`."""

    def __init__(self) -> None:
        self.posts: list[list[dict]] = []
        self.down = False

    def post(self, alerts: list[dict]) -> None:
        if self.down:
            raise AlertmanagerError("POST http://127.0.0.1:9095/api/v2/alerts: no answer (ConnectError)")
        self.posts.append(alerts)


class Clock:
    def __init__(self, t: datetime = NOW) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> datetime:
        self.t += timedelta(seconds=seconds)
        return self.t


def z(t: datetime) -> str:
    """RFC 3339 as posted: UTC, milliseconds, Z."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(new: str, at: datetime, labels: dict[str, str] = LABELS, value: float = 86.4, cause: str = "c1",
           old: str = "inactive", flapping: bool = False) -> dict[str, Any]:
    """An alert book record (a dcpulse.alert/1 transition plus inhibited_by and cause)."""
    shown = {**labels, "flapping": "true"} if flapping else labels
    return {"schema": "dcpulse.alert/1", "at": iso_ms(epoch_ms(at)), "old": old, "new": new,
            "resolved": old in ("firing", "keep_firing") and new == "inactive", "flapping": flapping,
            "value": value, "fingerprint": fingerprint(labels), "labels": shown,
            "annotations": {"summary": "hot"}, "inhibited_by": [], "cause": cause}


def notifier(clock: Clock | None = None) -> tuple[Notifier, RecordingAlertmanager, Clock]:
    client, clock = RecordingAlertmanager(), clock or Clock()
    n = Notifier(client, AlertmanagerSettings(resend_s=RESEND_S), PIPELINE, now=clock)  # type: ignore[arg-type]
    return n, client, clock


def posted(client: RecordingAlertmanager) -> list[dict]:
    return [alert for post in client.posts for alert in post]


# ---- firing, resending, resolving ---------------------------------------------------------------

def test_a_firing_alert_is_posted_once_with_its_cause_and_pipeline_held_four_resends_ahead() -> None:
    n, client, _ = notifier()
    fired_at = NOW - timedelta(seconds=30)  # event time behind the wall clock: it started then
    n.take([record("firing", fired_at, value=86.4321)])
    assert n.flush() is True
    [[alert]] = client.posts
    assert alert["labels"] == {**LABELS, "cause": "c1", "pipeline": PIPELINE}
    assert alert["startsAt"] == z(fired_at) == "2026-07-01T11:59:30.000Z"
    assert alert["endsAt"] == z(NOW + timedelta(seconds=HOLD_RESENDS * RESEND_S)) == "2026-07-01T12:04:00.000Z"
    assert alert["annotations"] == {"summary": "hot", "value": "86.43", "event_time": iso_ms(epoch_ms(fired_at))}
    assert n.flush() is True and len(client.posts) == 1  # nothing new: nothing posted again
    assert n.counts == {"posted": 1, "failed_posts": 0}


def test_an_event_time_ahead_of_the_wall_clock_starts_the_alert_now() -> None:
    n, client, _ = notifier()
    n.take([record("firing", NOW + timedelta(hours=3))])  # a replay running ahead
    n.flush()
    assert posted(client)[0]["startsAt"] == z(NOW)


def test_a_later_transition_of_the_same_firing_alert_is_not_posted_again() -> None:
    n, client, clock = notifier()
    n.take([record("firing", NOW)])
    n.flush()
    clock.advance(10)
    n.take([record("keep_firing", NOW + timedelta(seconds=10), old="firing"),
            {**record("firing", NOW + timedelta(seconds=10), old="firing"), "inhibited_by": ["abc"]}])
    assert n.flush() is True and len(client.posts) == 1


def test_resend_reposts_a_firing_alert_with_a_later_endsAt_and_the_same_startsAt() -> None:
    n, client, clock = notifier()
    n.take([record("firing", NOW)])
    n.flush()
    later = clock.advance(RESEND_S)
    n.resend()
    assert n.flush() is True
    first, again = posted(client)
    assert again["labels"] == first["labels"] and again["startsAt"] == first["startsAt"] == z(NOW)
    assert again["endsAt"] == z(later + timedelta(seconds=HOLD_RESENDS * RESEND_S)) > first["endsAt"]


def test_a_resolution_posts_endsAt_now_with_the_original_startsAt_and_is_not_resent() -> None:
    n, client, clock = notifier()
    n.take([record("firing", NOW)])
    n.flush()
    resolved_at = clock.advance(90)
    n.take([record("inactive", NOW + timedelta(seconds=90), old="firing")])
    n.flush()
    _, end = posted(client)
    assert end["labels"] == {**LABELS, "cause": "c1", "pipeline": PIPELINE}
    assert end["startsAt"] == z(NOW) and end["endsAt"] == z(resolved_at)
    clock.advance(RESEND_S)
    n.resend()
    assert n.flush() is True and len(client.posts) == 2  # a resolved alert is not re-posted


def test_a_resolution_of_an_alert_that_never_fired_posts_nothing() -> None:
    n, client, _ = notifier()
    n.take([record("pending", NOW), record("inactive", NOW + timedelta(seconds=10), old="pending")])
    assert n.flush() is True and client.posts == []


def test_an_alert_whose_labels_change_gets_the_old_label_set_ended_and_the_new_one_posted() -> None:
    n, client, clock = notifier()
    n.take([record("firing", NOW)])
    n.flush()
    now = clock.advance(120)
    n.take([record("firing", NOW + timedelta(seconds=120), old="firing", flapping=True)])  # same fingerprint
    n.flush()
    _, changed = client.posts
    by_flapping = {alert["labels"].get("flapping"): alert for alert in changed}
    assert set(by_flapping) == {None, "true"} and len(changed) == 2
    old, new = by_flapping[None], by_flapping["true"]
    assert old["labels"] == {**LABELS, "cause": "c1", "pipeline": PIPELINE}
    assert old["startsAt"] == z(NOW) and old["endsAt"] == z(now)  # the old label set is ended now
    assert new["labels"] == {**LABELS, "flapping": "true", "cause": "c1", "pipeline": PIPELINE}
    assert new["startsAt"] == z(now) and new["endsAt"] == z(now + timedelta(seconds=HOLD_RESENDS * RESEND_S))
    # From now on the new label set is the one resent.
    clock.advance(RESEND_S)
    n.resend()
    n.flush()
    assert [a["labels"].get("flapping") for a in client.posts[-1]] == ["true"]


def test_a_cause_change_is_a_label_change_too() -> None:
    n, client, _ = notifier()
    n.take([record("firing", NOW, cause="r1")])
    n.take([record("firing", NOW, old="firing", cause="c1")])
    n.flush()
    [post] = client.posts
    assert sorted((a["labels"]["cause"], a["endsAt"] == z(NOW)) for a in post) == [("c1", False), ("r1", True)]


# ---- an unreachable Alertmanager ----------------------------------------------------------------

def test_during_an_outage_flush_fails_and_keeps_the_posts_queued_for_a_later_flush() -> None:
    n, client, clock = notifier()
    client.down = True
    n.take([record("firing", NOW), record("firing", NOW, labels=OTHER)])
    assert n.flush() is False
    assert n.flush() is False
    assert client.posts == [] and n.counts == {"posted": 0, "failed_posts": 2}

    client.down = False
    clock.advance(30)
    assert n.flush() is True
    [post] = client.posts
    assert sorted(a["labels"]["device"] for a in post) == ["srv-1", "srv-2"]
    assert n.counts == {"posted": 2, "failed_posts": 2}
    assert n.flush() is True and len(client.posts) == 1  # delivered once: nothing left queued


def test_during_an_outage_a_second_update_of_an_alert_replaces_its_queued_post() -> None:
    n, client, clock = notifier()
    client.down = True
    n.take([record("firing", NOW), record("firing", NOW, labels=OTHER)])
    n.flush()
    later = clock.advance(RESEND_S)
    n.resend()  # both re-queued with a later endsAt: still one post per alert
    n.take([record("inactive", NOW + timedelta(seconds=RESEND_S), labels=OTHER, old="firing")])  # srv-2 resolves
    assert n.flush() is False

    client.down = False
    assert n.flush() is True
    [post] = client.posts
    by_device = {a["labels"]["device"]: a for a in post}
    assert len(post) == 2 and set(by_device) == {"srv-1", "srv-2"}
    assert by_device["srv-1"]["endsAt"] == z(later + timedelta(seconds=HOLD_RESENDS * RESEND_S))
    assert by_device["srv-2"]["endsAt"] == z(later) and by_device["srv-2"]["startsAt"] == z(NOW)  # its resolution
    assert n.counts == {"posted": 2, "failed_posts": 2}


def test_an_alert_taken_while_a_post_is_failing_is_not_lost() -> None:
    n, client, _ = notifier()
    client.down = True
    n.take([record("firing", NOW)])
    assert n.flush() is False
    n.take([record("firing", NOW, labels=OTHER)])
    client.down = False
    assert n.flush() is True
    assert sorted(a["labels"]["device"] for a in posted(client)) == ["srv-1", "srv-2"]


# ---- the loop ----------------------------------------------------------------------------------

def test_run_flushes_what_is_queued_when_stopped() -> None:
    n, client, _ = notifier()
    n.take([record("firing", NOW)])
    stopping = threading.Event()
    stopping.set()
    n.run(stopping, tick_s=0.01)
    assert [a["labels"]["device"] for a in posted(client)] == ["srv-1"]


def test_run_reposts_firing_alerts_every_resend_interval_until_stopped() -> None:
    client, clock = RecordingAlertmanager(), Clock()
    n = Notifier(client, AlertmanagerSettings(resend_s=0.05), PIPELINE, now=clock)  # type: ignore[arg-type]
    n.take([record("firing", NOW)])
    stopping = threading.Event()
    thread = threading.Thread(target=n.run, args=(stopping, 0.01))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(client.posts) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stopping.set()
        thread.join(5)
    assert not thread.is_alive()
    assert len(client.posts) >= 3  # the first post, then resends
    assert all([a["labels"]["device"] for a in post] == ["srv-1"] for post in client.posts)


# ---- the Alertmanager shape -----------------------------------------------------------------------

def test_am_labels_add_cause_and_pipeline_to_the_alerts_own_labels() -> None:
    assert am_labels(record("firing", NOW, cause="c7"), "p") == {**LABELS, "cause": "c7", "pipeline": "p"}


def test_am_alert_sends_utc_times_with_milliseconds() -> None:
    local = datetime(2026, 7, 1, 14, 0, 0, 123456, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    alert = am_alert({"a": "b"}, record("firing", NOW), local, local + timedelta(minutes=4))
    assert alert["startsAt"] == "2026-07-01T14:00:00.123Z" and alert["endsAt"] == "2026-07-01T14:04:00.123Z"
