"""`dcpulse console`: serve the operators' web application on 127.0.0.1."""

from __future__ import annotations

import click

from dcpulse.cliutil import load_settings, say


@click.command()
@click.option("--port", type=int, help="port on 127.0.0.1 (default: console.port, 8088)")
def console(port: int | None) -> None:
    """The live operator console in the browser: all sites, each site's floor, racks, alerts.
    Reads InfluxDB with the read-only token; Ctrl-C stops it."""
    import uvicorn

    from dcpulse.services.onboarding import influx_token
    from dcpulse.streams.alertrules import inhibitions, load_rules
    from dcpulse.views.console import create_app
    from dcpulse.views.console_data import Reader

    settings = load_settings()
    try:
        token = influx_token(settings, "read")
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    reader = Reader(settings, token, inhibitions(load_rules(settings.alerts.rules_file)))
    host, port = settings.console.host, port or settings.console.port
    say(f"console on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(create_app(reader, settings.console.refresh_s), host=host, port=port, log_level="warning")
