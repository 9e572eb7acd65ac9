from datetime import UTC, datetime

from dcpulse.sinks.query import device_samples_query, flux_string, measurement_query, sample_count_query


def test_flux_strings_are_escaped() -> None:
    assert flux_string('a"b') == '"a\\"b"'
    assert flux_string("back\\slash") == '"back\\\\slash"'
    assert flux_string("${x}") == '"\\${x}"'


def test_device_query_filters_on_the_escaped_device() -> None:
    query = device_samples_query("raw", 'pdu") |> drop(', datetime(2026, 1, 1, tzinfo=UTC))
    assert 'r.device == "pdu\\") |> drop("' in query
    assert "range(start: 2026-01-01T00:00:00.000000Z)" in query


def test_sample_count_counts_the_one_seq_field_every_raw_point_has() -> None:
    query = sample_count_query("dcpulse_raw", datetime(2026, 1, 1, tzinfo=UTC))
    assert 'from(bucket: "dcpulse_raw")' in query and 'r._field == "seq"' in query
    assert query.endswith("|> group() |> count()")


def test_measurement_query_escapes_measurement_and_site() -> None:
    query = measurement_query("analytics", 'pue"', 'a"b', datetime(2026, 1, 1, tzinfo=UTC))
    assert 'r._measurement == "pue\\"" and r.site == "a\\"b"' in query
