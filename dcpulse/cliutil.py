"""What every `dcpulse` command module shares: the console, settings with logging set up, `say`."""

from __future__ import annotations

import os
import time

from rich.console import Console

from dcpulse.log import configure_logging
from dcpulse.settings import Settings, get_settings

console = Console(stderr=False)


def load_settings() -> Settings:
    settings = get_settings()
    configure_logging(os.environ.get("DCPULSE_LOG_FORMAT", settings.log_format), settings.log_level)
    return settings


def say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False, soft_wrap=True)
