"""Library log records repeated during an outage: said once, then summarised."""

from __future__ import annotations

import logging

from dcpulse.log import RepeatLimiter


def _record(name: str, msg: str, level: int = logging.ERROR, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_library_error_passes_once_per_window_with_the_count_held_back() -> None:
    now = [0.0]
    limiter = RepeatLimiter(window_s=30, clock=lambda: now[0])
    passed = []
    for i in range(400):  # 10 s of a client retrying every 25 ms
        now[0] = i * 0.025
        record = _record("aiokafka.conn", "Unable connect to node with id %s: %s", logging.ERROR, 1, "refused")
        if limiter.filter(record):
            passed.append(record.getMessage())
    assert passed == ["Unable connect to node with id 1: refused"]
    now[0] = 40.0
    late = _record("aiokafka.conn", "Unable connect to node with id %s: %s", logging.ERROR, 1, "refused")
    assert limiter.filter(late) and "(and 399 more like it in the last 40 s)" in late.getMessage()


def test_other_messages_our_own_and_info_are_never_held_back() -> None:
    limiter = RepeatLimiter(window_s=30, clock=lambda: 0.0)
    assert limiter.filter(_record("aiokafka", "a")) and limiter.filter(_record("aiokafka", "b"))
    assert all(limiter.filter(_record("dcpulse.streams", "ours")) for _ in range(3))
    assert all(limiter.filter(_record("faust", "info", logging.INFO)) for _ in range(3))
