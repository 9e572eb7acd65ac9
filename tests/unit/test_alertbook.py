"""The alert book (streams/alertbook.py): which active alert suppresses which, from the default
rule pack's topology-derived inhibitions, and the cause each alert is grouped under."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dcpulse.streams.alertbook import AlertBook, cause_of
from dcpulse.streams.alerting import AlertEvent, fingerprint
from dcpulse.streams.alertrules import inhibitions, load_rules
from dcpulse.streams.alertstate import Transition
from dcpulse.streams.validation import epoch_ms, iso_ms

T0 = epoch_ms(datetime(2026, 7, 1, tzinfo=UTC))
INHIBITIONS = inhibitions(load_rules())


def at(seconds: float) -> int:
    return T0 + round(seconds * 1000)


def event(labels: dict[str, str], new: str, seconds: float, old: str | None = None,
          value: float = 1.0) -> dict[str, Any]:
    """One dcpulse.alert/1 transition, in the shape the stages write (AlertEvent.to_json)."""
    old = old or ("inactive" if new != "inactive" else "firing")
    transition = Transition(at(seconds), old, new, flapping=False,  # type: ignore[arg-type]
                            resolved=old in ("firing", "keep_firing") and new == "inactive")
    return AlertEvent(labels["alertname"], fingerprint(labels), labels, {}, transition, value).to_json()


def server_alert(alertname: str = "accelerator_temperature_high", site: str = "s", cdu: str | None = "c1",
                 rack: str = "r1", device: str = "srv-1") -> dict[str, str]:
    labels = {"alertname": alertname, "severity": "warning", "site": site, "device": device, "kind": "server",
              "hall": "h1", "rack": rack}
    if cdu is not None:
        labels["cdu"] = cdu
    if alertname.startswith("accelerator_"):
        labels["metric"] = "acc0_temp_c"
    return labels


def pump_lost(site: str = "s", cdu: str = "c1") -> dict[str, str]:
    return {"alertname": "cdu_pump_redundancy_lost", "severity": "warning", "site": site, "device": cdu,
            "kind": "cdu", "hall": "h1", "cdu": cdu}


def chiller_stopped(site: str = "s") -> dict[str, str]:
    return {"alertname": "chiller_stopped_while_needed", "severity": "critical", "site": site,
            "device": "chiller-1", "kind": "chiller"}


def rack_silent(rack: str = "r1", site: str = "s") -> dict[str, str]:
    return {"alertname": "rack_not_reporting", "severity": "critical", "site": site, "device": rack,
            "kind": "rack", "hall": "h1", "rack": rack, "cdu": "c1"}


def fired(book: AlertBook, labels: dict[str, str], seconds: float = 0.0) -> dict[str, Any]:
    """Fire an alert; its own record."""
    return book.apply(event(labels, "firing", seconds))[0]


# ---- CDU loop trouble suppresses the accelerators it cools ------------------------------------

def test_an_accelerator_alert_firing_while_its_cdu_has_lost_pump_redundancy_is_recorded_inhibited_by_it() -> None:
    book = AlertBook(INHIBITIONS)
    source = fired(book, pump_lost(), 0)
    assert source["inhibited_by"] == [] and source["cause"] == "c1"

    records = book.apply(event(server_alert(), "firing", 30))
    assert [r["fingerprint"] for r in records] == [fingerprint(server_alert())]
    assert records[0]["inhibited_by"] == [fingerprint(pump_lost())]
    assert records[0]["new"] == "firing" and records[0]["at"] == iso_ms(at(30))


def test_a_target_recorded_before_its_sources_transition_arrived_is_re_recorded_at_its_own_time() -> None:
    book = AlertBook(INHIBITIONS)
    early = fired(book, server_alert(device="srv-0"), 0)  # before the pump failed: never covered
    target = fired(book, server_alert(), 60)  # its partition was read first
    assert target["inhibited_by"] == []

    records = book.apply(event(pump_lost(), "firing", 45))
    assert [r["fingerprint"] for r in records] == [fingerprint(pump_lost()), fingerprint(server_alert())]
    source, updated = records
    assert source["inhibited_by"] == [] and source["new"] == "firing"
    assert updated["inhibited_by"] == [fingerprint(pump_lost())]
    assert updated["at"] == iso_ms(at(60)) == target["at"]  # the same record, judged again
    assert (updated["old"], updated["new"]) == (target["old"], target["new"])
    assert updated["labels"] == server_alert() and updated["cause"] == "c1"
    assert early["inhibited_by"] == []



def test_a_targets_transition_after_its_source_resolved_is_not_inhibited_whatever_arrived_first() -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, pump_lost(), 0)
    assert fired(book, server_alert(), 30)["inhibited_by"] == [fingerprint(pump_lost())]
    late = book.apply(event(server_alert(), "inactive", 400, old="firing"))[0]  # read before the resolution
    assert late["inhibited_by"] == [fingerprint(pump_lost())]

    records = book.apply(event(pump_lost(), "inactive", 300, old="firing"))
    assert [r["fingerprint"] for r in records] == [fingerprint(pump_lost()), fingerprint(server_alert())]
    resolution, updated = records
    assert resolution["resolved"] and resolution["new"] == "inactive"
    assert updated["at"] == iso_ms(at(400)) and updated["inhibited_by"] == [] and updated["new"] == "inactive"
    assert fingerprint(pump_lost()) not in book.active



def test_a_source_that_stays_active_into_keep_firing_does_not_re_record_its_targets() -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, pump_lost(), 0)
    fired(book, server_alert(), 30)
    records = book.apply(event(pump_lost(), "keep_firing", 60, old="firing"))
    assert [r["fingerprint"] for r in records] == [fingerprint(pump_lost())]
    assert book.active[fingerprint(server_alert())]["inhibited_by"] == [fingerprint(pump_lost())]


def test_a_pending_cdu_source_does_not_yet_inhibit() -> None:
    book = AlertBook(INHIBITIONS)
    book.apply(event(pump_lost(), "pending", 0))
    assert fired(book, server_alert(), 30)["inhibited_by"] == []


@pytest.mark.parametrize("target", [
    server_alert(cdu="c2"),  # a rack cooled by another CDU's loop
    server_alert(site="other"),  # the same CDU name at another site
    server_alert(cdu=None),  # an air-cooled server of the same rack
], ids=["other_cdu", "other_site", "air_cooled"])
def test_a_cdu_source_never_inhibits_alerts_outside_its_loop(target: dict[str, str]) -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, pump_lost(), 0)
    assert fired(book, target, 30)["inhibited_by"] == []
    # nor when the source fires after it
    book2 = AlertBook(INHIBITIONS)
    fired(book2, target, 0)
    assert len(book2.apply(event(pump_lost(), "firing", 30))) == 1


# ---- a chiller covers the whole site, but only the air side -----------------------------------

@pytest.mark.parametrize("alertname", ["rack_inlet_above_allowable", "rack_inlet_above_a2_allowable"])
def test_a_stopped_chiller_inhibits_rack_inlet_alerts_anywhere_in_its_site(alertname: str) -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, chiller_stopped(), 0)
    far = server_alert(alertname, cdu="c9", rack="r42", device="srv-99")
    assert fired(book, far, 60)["inhibited_by"] == [fingerprint(chiller_stopped())]


def test_a_stopped_chiller_does_not_inhibit_accelerator_alerts_nor_inlet_alerts_of_another_site() -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, chiller_stopped(), 0)
    assert fired(book, server_alert("accelerator_temperature_high"), 60)["inhibited_by"] == []
    assert fired(book, server_alert("rack_inlet_above_allowable", site="other"), 60)["inhibited_by"] == []


# ---- a silent rack covers its own devices' silence ---------------------------------------------

def test_a_silent_rack_inhibits_the_silence_of_its_own_devices_only() -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, rack_silent("r1"), 0)
    mine = server_alert("device_not_reporting", rack="r1", device="r1-srv-1")
    its_pdu = {**server_alert("pdu_not_reporting", rack="r1", device="pdu-r1"), "kind": "pdu"}
    neighbour = server_alert("device_not_reporting", rack="r2", device="r2-srv-1")
    assert fired(book, mine, 10)["inhibited_by"] == [fingerprint(rack_silent("r1"))]
    assert fired(book, its_pdu, 10)["inhibited_by"] == [fingerprint(rack_silent("r1"))]
    assert fired(book, neighbour, 10)["inhibited_by"] == []


def test_a_silent_rack_does_not_inhibit_its_devices_other_alerts() -> None:
    book = AlertBook(INHIBITIONS)
    fired(book, rack_silent("r1"), 0)
    assert fired(book, server_alert("accelerator_temperature_high", rack="r1"), 10)["inhibited_by"] == []


def test_an_alert_covered_by_two_active_sources_lists_both_and_loses_one_at_a_time() -> None:
    book = AlertBook(INHIBITIONS)
    inlet = server_alert("rack_inlet_above_allowable")
    fired(book, pump_lost(), 0)
    fired(book, chiller_stopped(), 0)
    assert fired(book, inlet, 10)["inhibited_by"] == sorted([fingerprint(pump_lost()), fingerprint(chiller_stopped())])
    assert book.apply(event(chiller_stopped(), "inactive", 20, old="firing"))[1:] == []  # its record at 10 stands
    later = book.apply(event(inlet, "inactive", 30, old="firing"))[0]
    assert later["inhibited_by"] == [fingerprint(pump_lost())]



# ---- cause: what notifications are grouped under -----------------------------------------------

@pytest.mark.parametrize("labels, cause", [
    (pump_lost(cdu="cdu-h1-01"), "cdu-h1-01"),  # a CDU source: its CDU
    (server_alert("accelerator_temperature_high", cdu="cdu-h1-02", rack="h1-k3"), "cdu-h1-02"),  # cooled by that loop
    (server_alert("rack_inlet_above_allowable", cdu=None, rack="h2-k7"), "h2-k7"),  # air-cooled: its rack
    (rack_silent("h1-k4"), "h1-k4"),  # a rack source: its rack
    ({"alertname": "pue_above_target", "severity": "warning", "site": "big", "device": "big", "kind": "site"},
     "big"),  # a site-level alert: the site
    (chiller_stopped(site="big"), "big"),  # a site-scoped source: the site
], ids=["cdu_source", "liquid_cooled_server", "air_cooled_server", "rack_source", "site_alert", "chiller_source"])
def test_cause_of_groups_an_alert_under_the_topology_element_behind_it(labels: dict[str, str], cause: str) -> None:
    assert cause_of(labels, INHIBITIONS) == cause


def test_every_record_carries_its_cause() -> None:
    book = AlertBook(INHIBITIONS)
    assert fired(book, server_alert(cdu=None, rack="r7"), 0)["cause"] == "r7"
    assert fired(book, chiller_stopped(), 0)["cause"] == "s"


def test_the_records_end_up_the_same_whatever_order_the_alerts_partitions_are_read_in() -> None:
    import random

    lanes = [  # each alert's own transitions stay in order (one partition per fingerprint)
        [event(pump_lost(), "firing", 45), event(pump_lost(), "inactive", 300, old="firing")],
        [event(chiller_stopped(), "firing", 100), event(chiller_stopped(), "inactive", 200, old="firing")],
        [event(server_alert(), "firing", 10), event(server_alert(), "inactive", 60, old="firing"),
         event(server_alert(), "firing", 120), event(server_alert(), "inactive", 350, old="firing")],
        [event(server_alert("rack_inlet_above_allowable"), "firing", 150),
         event(server_alert("rack_inlet_above_allowable"), "inactive", 250, old="firing")],
    ]

    def final_log(seed: int) -> dict[tuple[str, str], list[str]]:
        rng, queues, book, log = random.Random(seed), [list(lane) for lane in lanes], AlertBook(INHIBITIONS), {}
        while any(queues):
            for record in book.apply(rng.choice([q for q in queues if q]).pop(0)):
                log[(record["fingerprint"], record["at"])] = record["inhibited_by"]
        return log

    expected = final_log(0)
    assert expected[(fingerprint(server_alert()), iso_ms(at(120)))] == [fingerprint(pump_lost())]
    assert expected[(fingerprint(server_alert("rack_inlet_above_allowable")), iso_ms(at(150)))] == sorted(
        [fingerprint(pump_lost()), fingerprint(chiller_stopped())])
    assert expected[(fingerprint(server_alert()), iso_ms(at(10)))] == []
    for seed in range(1, 40):
        assert final_log(seed) == expected
