from datetime import UTC, datetime, timedelta

import orjson

from dcpulse.contract import AnalyticsPoint, DeviceKind, Sample, TelemetryBatch
from dcpulse.sinks.points import AlertLines, TelemetryLines, analytics_lines, escape_tag_value, fields
from dcpulse.streams.alertbook import AlertBook

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
TS = datetime(2026, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
TS_NS = 1767225601500000000


def lines_of(batch: bytes, retention: timedelta = timedelta(hours=1)) -> TelemetryLines:
    return TelemetryLines(retention, clock=lambda: int(NOW.timestamp()) * 10**9)(batch)


def batch(*samples: Sample, site: str = "s1") -> bytes:
    return TelemetryBatch(site=site, agent="rack-k1", samples=list(samples)).to_bytes()


def pdu(**overrides: object) -> Sample:
    fields_ = {"device": "pdu-1", "kind": DeviceKind.PDU, "hall": "h1", "rack": "k1", "seq": 3, "ts": TS,
               "metrics": {"power_kw": 42.5}}
    return Sample(**{**fields_, **overrides})


def test_a_sample_is_one_line_with_sorted_location_tags_float_metrics_integer_seq_and_ns_time() -> None:
    out = lines_of(batch(pdu(metrics={"power_kw": 42.5, "energy_kwh": 7.0})))
    assert out.lines == [b"pdu,device=pdu-1,hall=h1,rack=k1,site=s1 power_kw=42.5,energy_kwh=7.0,seq=3i " +
                         str(TS_NS).encode()]
    assert out.sources == [0] and out.refused == []


def test_absent_location_levels_are_not_tagged() -> None:
    meter = pdu(device="meter", kind=DeviceKind.FACILITY_METER, hall=None, rack=None, metrics={"power_kw": 1.0})
    assert lines_of(batch(meter)).lines[0].startswith(b"facility_meter,device=meter,site=s1 power_kw=1.0,seq=3i ")


def test_the_time_keeps_its_zone_and_every_microsecond() -> None:
    value = batch(pdu()).replace(b"2026-01-01T00:00:01.500000Z", b"2026-01-01T08:00:01.000001+08:00")
    assert lines_of(value).lines[0].endswith(b" 1767225601000001000")


def test_integral_and_tiny_and_huge_metrics_stay_float_fields() -> None:
    assert fields({"a": 2, "b": 1e-7, "c": 1e20, "d": -0.5}) == b"a=2,b=1e-7,c=1e+20,d=-0.5"


def test_names_that_need_escaping_are_escaped() -> None:
    assert fields({"x y": 1.0, "a,b=c": 2.0, "k:v": 3.0}) == b"x\\ y=1.0,a\\,b\\=c=2.0,k:v=3.0"
    raw = orjson.loads(batch(pdu()))
    raw["site"], raw["samples"][0]["kind"], raw["samples"][0]["device"] = "my site", "p,du", "a=b"
    assert lines_of(orjson.dumps(raw)).lines[0].startswith(b"p\\,du,device=a\\=b,hall=h1,rack=k1,site=my\\ site ")
    assert escape_tag_value("ends\\") == "ends\\ "  # else the backslash would escape the separator


def test_a_sample_outside_retention_is_refused_alone_with_its_index_and_json() -> None:
    old = pdu(device="pdu-old", ts=NOW - timedelta(hours=2))
    out = lines_of(batch(pdu(), old, pdu(device="pdu-2")))
    assert out.sources == [0, 2] and [line.split(b" ")[0] for line in out.lines] == [
        b"pdu,device=pdu-1,hall=h1,rack=k1,site=s1", b"pdu,device=pdu-2,hall=h1,rack=k1,site=s1"]
    [refused] = out.refused
    assert refused.rejection.reason == "outside_retention" and refused.sample_index == 1
    assert orjson.loads(refused.value or b"")["device"] == "pdu-old"


def test_a_misshapen_sample_is_refused_alone() -> None:
    raw = orjson.loads(batch(pdu(), pdu(device="pdu-2"), pdu(device="pdu-3")))
    raw["samples"][0]["seq"] = 1.5
    raw["samples"][1]["metrics"] = {"power_kw": True}
    out = lines_of(orjson.dumps(raw))
    assert out.sources == [2]
    assert [(r.rejection.reason, r.sample_index) for r in out.refused] == [("invalid_fields", 0), ("invalid_fields", 1)]


def test_a_record_that_is_not_a_batch_is_refused_whole() -> None:
    for value, reason in ((b"{nope", "malformed_json"), (b"[1, 2]", "invalid_fields"), (b'{"site": "s"}', "invalid_fields")):
        out = lines_of(value)
        assert out.lines == [] and [(r.rejection.reason, r.sample_index, r.value) for r in out.refused] == [
            (reason, None, None)]


def test_an_analytics_point_is_one_line_at_its_window_start() -> None:
    point = AnalyticsPoint(measurement="pue", tags={"site": "s1", "category": "1"},
                           fields={"pue": 1.25, "quality": "complete"}, time=datetime(2026, 1, 1, tzinfo=UTC))
    out = analytics_lines(point.to_bytes())
    assert out.lines == [b'pue,category=1,site=s1 pue=1.25,quality="complete" 1767225600000000000']
    assert out.sources == [None]


def test_an_analytics_point_with_no_field_value_is_refused() -> None:
    point = AnalyticsPoint(measurement="pue", tags={"site": "s1"}, fields={"pue": float("nan")},
                           time=datetime(2026, 1, 1, tzinfo=UTC))  # NaN travels as null
    [refused] = analytics_lines(point.to_bytes()).refused
    assert refused.rejection.reason == "invalid_fields" and refused.sample_index is None


def test_an_alert_transition_becomes_one_alert_line_with_its_labels_as_tags() -> None:
    event = {"schema": "dcpulse.alert/1", "at": "2026-07-01T00:00:10.500Z", "old": "pending", "new": "firing",
             "resolved": False, "flapping": True, "value": 86.5, "fingerprint": "abc123",
             "labels": {"alertname": "hot", "severity": "warning", "site": "s 1", "device": "d,1", "flapping": "true"},
             "annotations": {"summary": 'Accelerator "0" hot'}}
    seen = []
    alert_lines = AlertLines(AlertBook([]), seen.extend)
    (line,), sources, refused = alert_lines(orjson.dumps(event))
    assert line == (b'alert,alertname=hot,cause=d\\,1,device=d\\,1,fingerprint=abc123,severity=warning,site=s\\ 1 '
                    b'state="firing",old="pending",value=86.5,resolved=false,flapping=true,inhibited_by="",'
                    b'summary="Accelerator \\"0\\" hot" 1782864010500000000')
    assert sources == [None] and refused == [] and [r["fingerprint"] for r in seen] == ["abc123"]
    assert alert_lines(b"{not json").refused[0].rejection.reason == "malformed_json"
    assert alert_lines(orjson.dumps({"labels": {}})).refused[0].rejection.reason == "invalid_fields"
    assert len(seen) == 1
