import asyncio

from dcpulse.settings import Settings
from dcpulse.streams.app import AnalyticsWorker


def test_failed_deliveries_are_counted_once_and_pending_ones_kept() -> None:
    loop = asyncio.new_event_loop()
    try:
        worker = AnalyticsWorker(app=None, settings=Settings(), table=None)  # type: ignore[arg-type]
        ok, failed, pending = loop.create_future(), loop.create_future(), loop.create_future()
        ok.set_result(None)
        failed.set_exception(RuntimeError("MessageSizeTooLarge"))
        worker.in_flight = [("valid", ok), ("dead", failed), ("pue", pending)]
        worker.check_deliveries()
        assert worker.send_failures == {"dead": 1}
        assert worker.in_flight == [("pue", pending)]
        pending.set_exception(RuntimeError("broker gone"))
        worker.check_deliveries()
        worker.check_deliveries()  # seen once only
        assert worker.send_failures == {"dead": 1, "pue": 1} and worker.in_flight == []
    finally:
        loop.close()
