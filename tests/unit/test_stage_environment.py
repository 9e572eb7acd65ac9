"""Which InfluxDB tokens each pipeline stage's environment keeps."""

from dcpulse.pipeline import stage_environment

ENV = {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p", "DCPULSE_INFLUX__WRITE_TOKEN": "w",
       "DCPULSE_INFLUX__READ_TOKEN": "r"}


def test_the_worker_gets_no_token_and_the_sink_only_the_write_token() -> None:
    assert stage_environment(ENV, "streams") == {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p"}
    assert stage_environment(ENV, "sink") == {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p",
                                              "DCPULSE_INFLUX__WRITE_TOKEN": "w"}
    assert "DCPULSE_INFLUX__READ_TOKEN" not in stage_environment(ENV, "anything else")
