from datetime import UTC, datetime

from dcpulse.sinks.query import device_samples_query, flux_string


def test_flux_strings_are_escaped() -> None:
    assert flux_string('a"b') == '"a\\"b"'
    assert flux_string("back\\slash") == '"back\\\\slash"'
    assert flux_string("${x}") == '"\\${x}"'


def test_device_query_filters_on_the_escaped_device() -> None:
    query = device_samples_query("raw", 'pdu") |> drop(', datetime(2026, 1, 1, tzinfo=UTC))
    assert 'r.device == "pdu\\") |> drop("' in query
    assert "range(start: 2026-01-01T00:00:00.000000Z)" in query
