"""Which InfluxDB token files each pipeline stage is told of."""

from dcpulse.pipeline import stage_environment

ENV = {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p", "DCPULSE_INFLUX__WRITE_TOKEN_FILE": "w",
       "DCPULSE_INFLUX__READ_TOKEN_FILE": "r"}


def test_the_worker_gets_no_token_and_the_sink_only_the_write_token() -> None:
    assert stage_environment(ENV, "streams") == {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p"}
    assert stage_environment(ENV, "sink") == {"PATH": "/bin", "DCPULSE_TOPICS__PREFIX": "p",
                                              "DCPULSE_INFLUX__WRITE_TOKEN_FILE": "w"}
    assert "DCPULSE_INFLUX__READ_TOKEN_FILE" not in stage_environment(ENV, "anything else")


def test_a_server_gets_only_path_home_locale_zone_and_java_from_our_environment(monkeypatch) -> None:
    from dcpulse.services.process import server_environment

    monkeypatch.setenv("DCPULSE_ALERTMANAGER__WEBHOOK_URL", "secret")
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("JAVA_HOME", "/opt/java")
    env = server_environment()
    assert env["PATH"] == "/usr/bin" and env["JAVA_HOME"] == "/opt/java"
    assert "secret" not in env.values() and not [k for k in env if k.startswith("DCPULSE_")]
