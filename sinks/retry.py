"""Retry until done: capped exponential backoff, given up only when the sink is stopping."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from dcpulse.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Interrupted(Exception):
    """The sink stopped while a batch was not yet durable: its offsets stay uncommitted, so the
    next owner of its partitions redelivers it."""


class Retry:
    """Run an action until it succeeds. Between attempts it waits `first_s`, doubling up to
    `cap_s`, inside `idle` (the sink keeps its consumer group membership there). An exception of
    `permanent` types is the caller's to handle; once `stopping` is set, a failure ends the
    retries with `Interrupted` (no attempt that could hang on a server that is down)."""

    def __init__(self, stopping: threading.Event, idle: Callable[[float], None], *, sink: str,
                 first_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.stopping = stopping
        self.idle = idle
        self.sink = sink
        self.first_s = first_s
        self.cap_s = cap_s
        self.retries = 0

    def __call__(self, action: Callable[[], T], what: str,
                 permanent: tuple[type[Exception], ...] = ()) -> T:
        delay = self.first_s
        while True:
            try:
                return action()
            except permanent:
                raise
            except Exception as exc:  # noqa: BLE001 - connection refused, timeout, 5xx...: try again
                failure = exc
            if not self.stopping.is_set():
                self.retries += 1
                log.warning("failed, retrying", action=what, sink=self.sink, error=str(failure)[:300],
                            retry_in_s=delay)
                self.idle(delay)  # returns early when the sink is stopping
            if self.stopping.is_set():
                raise Interrupted(f"{what}: {failure!r}") from failure
            delay = min(delay * 2, self.cap_s)
