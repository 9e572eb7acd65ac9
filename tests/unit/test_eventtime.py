"""Event time (streams/eventtime.py): only watermark records move a site's clock on a partition,
a sample is judged against it, windows close on it, the same on every partition. A single record
with absurd timestamps must not stop anyone's windows."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from dcpulse.settings import AnalyticsSettings
from dcpulse.streams.combine import SiteState, add_partial
from dcpulse.streams.eventtime import SiteClock, accept_watermark, due_windows, sample_time_verdict
from dcpulse.streams.offline import reference_results
from dcpulse.streams.stage import clock_key
from dcpulse.streams.validation import epoch_ms, iso_ms
from tests.unit.test_offline import select, simulate
from tests.unit.test_stage import MINUTE, SITE, T0, S, ToySite, batch, handle, make_stage, pdu, run_stages, watermark

SKEW = 60 * S
PAUSE = 86_400 * S
LATENESS = 30 * S
YEAR_9999_MS = epoch_ms(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
YEAR_2200_MS = epoch_ms(datetime(2200, 1, 1, tzinfo=UTC))


# ---- watermarks ---------------------------------------------------------------------------------

def accept(clock, held, watermark, producer):
    return accept_watermark(clock, held, watermark, producer, SKEW, PAUSE, MINUTE)


def test_the_first_watermark_is_held_until_the_next_confirms_it() -> None:
    assert accept(None, None, T0 + 90 * S, T0 + 91 * S) == (None, None, T0 + 90 * S)
    # confirmed by the next one: closing starts at the window the held one falls in
    rejection, clock, held = accept(None, T0 + 90 * S, T0 + 100 * S, T0 + 101 * S)
    assert rejection is None and held is None and clock == SiteClock(T0 + 100 * S, T0 + 101 * S, T0 + MINUTE)


def test_a_newer_watermark_moves_the_clock_an_older_one_nothing() -> None:
    clock = SiteClock(T0 + 90 * S, T0 + 91 * S, T0 + MINUTE)
    assert accept(clock, None, T0 + 100 * S, T0 + 101 * S) == (None, SiteClock(T0 + 100 * S, T0 + 101 * S, T0 + MINUTE), None)
    for older in (T0 + 90 * S, T0):
        assert accept(clock, None, older, T0 + 200 * S) == (None, clock, None)


def test_a_single_watermark_in_year_9999_in_both_timestamps_moves_nothing() -> None:
    clock = SiteClock(T0, T0, T0)
    rejection, after, held = accept(clock, None, YEAR_9999_MS, YEAR_9999_MS)
    assert rejection is None and after == clock and held == YEAR_9999_MS
    # the producer's next, ordinary watermark moves the clock as usual and forgets the held one
    assert accept(clock, held, T0 + 10 * S, T0 + 10 * S) == (None, SiteClock(T0 + 10 * S, T0 + 10 * S, T0), None)
    # as the first watermark of a partition: held, and an ordinary one after it is held instead
    assert accept(None, None, YEAR_9999_MS, YEAR_9999_MS) == (None, None, YEAR_9999_MS)
    assert accept(None, YEAR_9999_MS, T0, T0) == (None, None, T0)


def test_a_jump_beyond_the_pause_limit_takes_effect_when_confirmed() -> None:
    clock = SiteClock(T0, T0, T0)
    later = T0 + PAUSE + 10 * S
    assert accept(clock, None, later, later) == (None, clock, later)
    assert accept(clock, later, later + 10 * S, later + 10 * S) == (
        None, SiteClock(later + 10 * S, later + 10 * S, T0), None)


@pytest.mark.parametrize("clock", [None, SiteClock(T0, T0, T0)])
def test_a_watermark_far_ahead_of_its_own_kafka_timestamp_is_clock_skew_and_moves_nothing(clock) -> None:
    rejection, after, held = accept(clock, None, T0 + SKEW + 1, T0)
    assert rejection is not None and rejection.reason == "clock_skew" and after == clock and held is None
    assert accept(clock, None, T0 + SKEW, T0)[0] is None  # the bound itself is fine
    assert accept(clock, None, T0 + SKEW + 1, None)[0] is None  # no timestamp: no bound


def test_site_clock_json_round_trips() -> None:
    for clock in (SiteClock(1, None, 0), SiteClock(T0, T0 + 5, T0 - MINUTE)):
        assert SiteClock.from_json(orjson.loads(orjson.dumps(clock.to_json()))) == clock


# ---- samples against the clock --------------------------------------------------------------------

def test_before_any_watermark_a_sample_is_judged_against_its_own_kafka_timestamp() -> None:
    assert sample_time_verdict(None, T0 + SKEW, T0, SKEW, PAUSE) is None
    rejected = sample_time_verdict(None, T0 + SKEW + 1, T0, SKEW, PAUSE)
    assert rejected is not None and rejected.reason == "clock_skew" and "no watermark yet" in rejected.detail
    assert sample_time_verdict(None, YEAR_9999_MS, None, SKEW, PAUSE) is None  # nothing to judge against


@pytest.mark.parametrize(
    "ahead_s, skewed",
    [(0, False), (30, False), (60, False), (60.001, True), (61, True), (600, True),
     (-1, False), (-3600, False), (-86400 * 365, False)],  # behind: late, never skew
)
def test_skew_ahead_versus_behind(ahead_s: float, skewed: bool) -> None:
    clock = SiteClock(T0, T0, T0)
    verdict = sample_time_verdict(clock, T0 + round(ahead_s * S), T0, SKEW, PAUSE)
    assert (verdict is not None and verdict.reason == "clock_skew") == skewed


def test_producer_time_since_the_watermark_widens_the_bound_up_to_the_pause_limit() -> None:
    clock = SiteClock(T0, T0, T0)
    hour = 3600 * S
    # The producer paused for an hour, then sent again: an hour ahead is no skew.
    assert sample_time_verdict(clock, T0 + hour, T0 + hour, SKEW, PAUSE) is None
    # But an agent ten minutes ahead of a busy producer is.
    assert sample_time_verdict(clock, T0 + 10 * MINUTE, T0 + S, SKEW, PAUSE) is not None
    # The widening is capped: both timestamps in year 9999 are still caught.
    verdict = sample_time_verdict(clock, YEAR_9999_MS, YEAR_9999_MS, SKEW, PAUSE)
    assert verdict is not None and verdict.reason == "clock_skew"
    # A Kafka timestamp older than the watermark's does not narrow it.
    assert sample_time_verdict(clock, T0 + SKEW, T0 - hour, SKEW, PAUSE) is None


# ---- closing windows ------------------------------------------------------------------------------------

def test_a_window_closes_once_the_watermark_is_its_end_plus_lateness() -> None:
    clock = SiteClock(T0 + MINUTE + LATENESS - 1, None, T0)
    starts, after = due_windows(clock, MINUTE, LATENESS, 1440)
    assert starts == [] and after is clock
    clock = SiteClock(T0 + MINUTE + LATENESS, None, T0)
    starts, after = due_windows(clock, MINUTE, LATENESS, 1440)
    assert starts == [T0] and after == SiteClock(T0 + MINUTE + LATENESS, None, T0 + MINUTE)


def test_several_windows_close_at_once_oldest_first() -> None:
    starts, after = due_windows(SiteClock(T0 + 5 * MINUTE + LATENESS, None, T0), MINUTE, LATENESS, 1440)
    assert starts == [T0 + i * MINUTE for i in range(5)] and after.next_start_ms == T0 + 5 * MINUTE


def test_a_jump_of_more_than_max_gap_windows_skips_to_the_last_window_before_the_watermark() -> None:
    gap = 10
    exactly = SiteClock(T0 + gap * MINUTE + LATENESS, None, T0)
    assert len(due_windows(exactly, MINUTE, LATENESS, gap)[0]) == gap  # at the limit: every window
    beyond = SiteClock(T0 + (gap + 1) * MINUTE + LATENESS + 5 * S, None, T0)
    starts, after = due_windows(beyond, MINUTE, LATENESS, gap)
    assert starts == [T0 + gap * MINUTE] and after.next_start_ms == T0 + (gap + 1) * MINUTE
    far = SiteClock(YEAR_9999_MS, None, T0)
    starts, after = due_windows(far, MINUTE, LATENESS, gap)
    assert len(starts) == 1 and starts[0] + MINUTE <= YEAR_9999_MS - LATENESS < starts[0] + 2 * MINUTE


# ---- through the stage -----------------------------------------------------------------------------------

# Year 9999 is beyond what InfluxDB stores (the contract refuses it); 2200 is storable, so the
# event-time rules must catch it.
FAR = [(YEAR_9999_MS, "invalid_fields"), (YEAR_2200_MS, "clock_skew")]


@pytest.mark.parametrize("far_ms, reason", FAR)
def test_a_watermark_far_ahead_of_its_kafka_timestamp_is_dead_lettered_and_moves_nothing(far_ms: int,
                                                                                          reason: str) -> None:
    stage = make_stage()
    handle(stage, 0, watermark(T0 + 8 * S), producer_ms=T0)  # held, then confirmed by the next
    handle(stage, 1, watermark(T0 + 9 * S), producer_ms=T0)
    before = stage.state[clock_key(SITE)]
    out = handle(stage, 2, watermark(far_ms), producer_ms=T0 + 10 * S)
    assert [(d.reason, d.sample_index) for _, d in out.dead] == [(reason, None)]
    assert out.partials == [] and stage.state[clock_key(SITE)] == before
    # Windows go on closing on the real watermarks.
    out = handle(stage, 3, watermark(T0 + MINUTE + LATENESS), producer_ms=T0 + MINUTE + LATENESS)
    assert [p.start_ms for p in out.partials] == [T0]


def test_samples_never_move_event_time() -> None:
    stage = make_stage()
    handle(stage, 0, watermark(T0 + 8 * S), producer_ms=T0)
    handle(stage, 1, watermark(T0 + 9 * S), producer_ms=T0)
    out = handle(stage, 2, batch("rack-h1-k1", pdu(0, T0 + 50 * S)), producer_ms=T0 + 50 * S)
    assert out.dead == [] and stage.state[clock_key(SITE)].watermark_ms == T0 + 9 * S
    assert handle(stage, 3, batch("rack-h1-k1", pdu(1, T0 + 10 * MINUTE)), producer_ms=T0 + 10 * MINUTE).partials == []


def test_a_partition_without_the_sites_agents_emits_empty_partials_on_its_watermarks() -> None:
    partitions = 3
    records = ToySite().records(20, lambda key: 0, partitions)  # every agent on partition 0
    outs = run_stages(records, partitions)
    assert set(outs) == {0, 1, 2}
    for p in (1, 2):
        assert outs[p].valid == [] and outs[p].partials
        assert [x.start_ms for x in outs[p].partials] == [x.start_ms for x in outs[0].partials]
        assert all(x.active == 0 and x.energies == {} and x.partitions == partitions for x in outs[p].partials)
    state = SiteState()
    cfg = AnalyticsSettings()
    points = []
    for partial in [x for p in (0, 1) for x in outs[p].partials]:
        points += add_partial(state, partial, cfg)
    assert points == []  # two of three partitions: nothing complete
    for partial in outs[2].partials:
        points += add_partial(state, partial, cfg)
    pue = [p for p in points if p.measurement == "pue" and p.tags["category"] == "1"]
    assert [p.time.timestamp() * 1000 for p in pue] == [x.start_ms for x in outs[0].partials]
    whole = next(p for p in pue if p.time.timestamp() * 1000 == T0 + MINUTE)
    assert whole.fields["pue"] == pytest.approx(ToySite.facility_kw / ToySite.ups_out_kw)


# ---- year 9999: one record must not stop anyone's windows ----------------------------------------------

PARTITIONS = 3


@pytest.fixture(scope="module")
def clean():
    _, records = simulate(["small"], 10 * 60, PARTITIONS)
    return records, reference_results(records, PARTITIONS)


def _year_9999_record(records, nth: int = 0, far_ms: int = YEAR_9999_MS):
    """The facility agent's nth batch with its facility meter sample stamped `far_ms` (default
    9999-12-31), sent with that Kafka timestamp too (a host whose clock says so)."""
    key = b"small/facility"
    partition, _, _, value = [r for r in records if r[2] == key][nth]
    doc = orjson.loads(value)
    meter = next(s for s in doc["samples"] if s["device"] == "facility-meter")
    doc["samples"] = [{**meter, "ts": iso_ms(far_ms)}]
    return partition, far_ms, key, orjson.dumps(doc)


def _windows_keep_producing(results, clean_results) -> None:
    minutes = {p.time for p in select(clean_results, "pue", site="small", category="1", window="1m")}
    assert len(minutes) >= 9
    for measurement, tags in (("pue", {"category": "1"}), ("utilisation", {"level": "site"}),
                              ("utilisation", {"level": "rack"})):
        got = {p.time for p in select(results, measurement, site="small", window="1m", **tags)}
        assert got == minutes, measurement


def test_a_year_9999_sample_as_the_first_record_of_a_partition_does_not_stop_windows(clean) -> None:
    records, clean_results = clean
    poison = _year_9999_record(records)
    results = reference_results([poison, *records], PARTITIONS)
    _windows_keep_producing(results, clean_results)
    assert results == clean_results  # its device's next samples are newer (seq): nothing else changes


@pytest.mark.parametrize("far_ms, reason", FAR)
def test_a_far_future_sample_mid_stream_is_dead_lettered_and_changes_nothing(clean, far_ms: int,
                                                                             reason: str) -> None:
    records, clean_results = clean
    poison = _year_9999_record(records, nth=20, far_ms=far_ms)
    at = records.index(next(r for r in records if r[2] == poison[2] and r[0] == poison[0] and r[1] > T0 + 5 * MINUTE))
    mixed = [*records[:at], poison, *records[at:]]
    results = reference_results(mixed, PARTITIONS)
    _windows_keep_producing(results, clean_results)
    assert results == clean_results
    outs = run_stages(mixed, PARTITIONS)
    assert [(d.reason, d.sample_index) for _, d in outs[poison[0]].dead] == [(reason, 0)]


@pytest.mark.parametrize("far_ms, reason", FAR)
def test_a_far_future_sample_with_an_ordinary_kafka_timestamp_is_dead_lettered_even_first(clean, far_ms: int,
                                                                                         reason: str) -> None:
    records, clean_results = clean
    partition, _, key, value = _year_9999_record(records, far_ms=far_ms)
    poison = (partition, records[0][1], key, value)
    outs = run_stages([poison, *records], PARTITIONS)
    assert [d.reason for _, d in outs[partition].dead] == [reason]
    assert reference_results([poison, *records], PARTITIONS) == clean_results


def test_stage_outputs_are_identical_across_partitions_for_every_window(clean) -> None:
    records, _ = clean
    outs = run_stages(records, PARTITIONS)
    starts = [[p.start_ms for p in outs[q].partials] for q in range(PARTITIONS)]
    assert starts[0] and all(s == starts[0] for s in starts)  # every partition closed the same windows
    assert starts[0] == sorted(set(starts[0]))
