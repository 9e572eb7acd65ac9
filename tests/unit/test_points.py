from datetime import UTC, datetime

from dcpulse.contract import DeviceKind, Telemetry
from dcpulse.sinks.points import telemetry_point


def test_point_has_location_tags_metric_fields_and_event_time() -> None:
    event = Telemetry(site="s1", hall="h1", rack="k1", device="pdu-1", kind=DeviceKind.PDU, seq=3,
                      ts=datetime(2026, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
                      metrics={"power_kw": 42.5})
    line = telemetry_point(event).to_line_protocol()
    assert line == "pdu,device=pdu-1,hall=h1,rack=k1,site=s1 power_kw=42.5,seq=3i 1767225601500000000"


def test_absent_location_levels_are_not_tagged() -> None:
    event = Telemetry(site="s1", device="meter", kind=DeviceKind.FACILITY_METER, seq=0,
                      ts=datetime(2026, 1, 1, tzinfo=UTC), metrics={"power_kw": 1.0})
    assert "hall=" not in telemetry_point(event).to_line_protocol()
