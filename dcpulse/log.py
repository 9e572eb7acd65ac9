"""structlog set-up: JSON lines for services, a readable console in a terminal, never a secret."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"token|password|secret|authorization", re.IGNORECASE)
# Influx tokens are long url-safe strings; catch them even inside free text.
_TOKEN_IN_TEXT = re.compile(r"(Token\s+)[A-Za-z0-9_\-=]{16,}")
MASK = "**********"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask values whose key names a secret, and tokens inside strings."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key) and value is not None:
            event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = _TOKEN_IN_TEXT.sub(rf"\g<1>{MASK}", value)
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once per process. fmt: auto | json | console."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (kafka-python, aiokafka, faust) go through stdlib logging: keep them
    # at WARNING so they do not drown our events, and on stderr like ours.
    logging.basicConfig(stream=sys.stderr, level=max(numeric_level, logging.WARNING))


class RepeatLimiter(logging.Filter):
    """For library loggers (Kafka clients during a broker outage log the same error many times
    a second): the first record of a kind passes, its repeats within `window_s` are counted,
    and the next one after the window passes with how many were held back. A kind is the
    logger, the level and the unformatted message."""

    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.seen: dict[tuple[str, int, str], list[float | int]] = {}  # kind -> [last passed at, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("dcpulse") or record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self.seen.get(kind)
        if entry is None:
            self.seen[kind] = [now, 0]
            return True
        if now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        if entry[1]:
            record.msg = f"{record.msg} (and {entry[1]} more like it in the last {now - entry[0]:.0f} s)"
        self.seen[kind] = [now, 0]
        return True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
