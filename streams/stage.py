"""The per-partition stage, without Kafka: raw records in (in partition order), outputs out.

For every raw record: the offset guard (a redelivered record was handled already), the
stateless rules (streams/validation.py), then per sample the event-time bound, the duplicate
rule and the fold into its device's windows (streams/windows.py). A watermark record moves the
site's event time on this partition (streams/eventtime.py) and closes due windows: final rack
results and one `SitePartial` per window for the combiner. The Faust worker (streams/app.py)
runs one per assigned partition over a `PartitionState` it checkpoints; the offline reference
(streams/offline.py) runs the same code over fresh states, so both give the same numbers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from dcpulse.contract import TELEMETRY_SCHEMA, AnalyticsPoint, DeadLetter, Sample, Watermark
from dcpulse.deadletter import Rejection, dead_letter
from dcpulse.settings import AnalyticsSettings, ValidationSettings
from dcpulse.streams.alerting import AlertEvent, RuleEngine, Where, decode_alert_entry
from dcpulse.streams.alertrules import DERIVED, Rule
from dcpulse.streams.eventtime import SiteClock, accept_watermark, due_windows, sample_time_verdict
from dcpulse.streams.state import OFFSET_KEY, PartitionState
from dcpulse.streams.validation import CLOCK_SKEW, DUPLICATE, STAGE_ERROR, ParsedBatch, epoch_ms, iso_ms, parse_record
from dcpulse.streams.windows import DeviceState, SitePartial, cdu_heat_kw, close_window, fold, new_device, prune


@dataclass
class Outputs:
    """What a run of records produced, in order, for the producer. Keys are Kafka keys."""

    valid: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead: list[tuple[bytes | None, DeadLetter]] = field(default_factory=list)
    results: list[AnalyticsPoint] = field(default_factory=list)  # rack utilisation
    partials: list[SitePartial] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def clock_key(site: str) -> str:
    return f"clock/{site}"


def held_key(site: str) -> str:
    return f"held/{site}"


def devices_key(site: str) -> str:
    return f"devices/{site}"


def _rack_where(rack: str, seen: list[tuple[int, str | None, str | None, str | None, str | None]]) -> Where:
    """A rack's alert entity, labelled from its devices the same way whichever reported last
    (its fingerprint must not change between firing and resolving): each label is the least
    of the values its devices carry."""
    def least(i: int) -> str | None:
        return min((s[i] for s in seen if s[i] is not None), default=None)

    return Where(rack, "rack", least(1), least(2), rack, least(3), least(4))


def dead_key(site: str) -> str:
    """Dead letters per publishing agent since the site's last watermark."""
    return f"dead/{site}"


def device_key(site: str, device: str) -> str:
    return f"device/{site}/{device}"


def decode_state(key: str, data: Any) -> Any:
    """The typed value of a state entry from its JSON form (the key says its type)."""
    if key.startswith("device/"):
        return DeviceState.from_json(data)
    if key.startswith("clock/"):
        return SiteClock.from_json(data)
    if key.startswith("alert"):
        return decode_alert_entry(key, data)
    return data  # the offset guard and held watermarks (int), device lists (sorted names)


def new_state(partition: int, buckets: int) -> PartitionState:
    return PartitionState(partition, buckets, decode_state)


class PartitionStage:
    def __init__(self, topic: str, partition: int, partitions: int, state: PartitionState,
                 validation: ValidationSettings, analytics: AnalyticsSettings, alert_rules: Sequence[Rule] = ()) -> None:
        self.topic = topic
        self.partition = partition
        self.partitions = partitions  # of the raw topic: how many partials each window gets
        self.state = state
        self.checks = validation
        self.cfg = analytics
        self.window_ms = analytics.window_s * 1000
        self.lateness_ms = round(analytics.allowed_lateness_s * 1000)
        self.skew_ms = round(validation.max_clock_skew_s * 1000)
        self.pause_ms = round(validation.max_producer_pause_s * 1000)
        self.forget_ms = round(analytics.meter_forget_s * 1000)
        # Alert state lives in the partition's state, so it is checkpointed with the windows.
        device_rules = [rule for rule in alert_rules if rule.kind != "site"]  # site rules: the combiner's
        self.alerts = RuleEngine(device_rules, state) if device_rules else None
        # device kind -> the derived inputs its rules judge, each with the range none fires on
        self._derived: dict[str, tuple[tuple[str, tuple[float, float]], ...]] = {}

    def handle(self, out: Outputs, offset: int, producer_ms: int | None, key: bytes | None,
               value: bytes | None) -> None:
        """One record, in partition order; its outputs are appended to `out`."""
        done = self.state.get(OFFSET_KEY)
        if done is not None and offset <= done:
            out.counts["redelivered"] += 1  # its outputs went out when it was first handled
            return
        try:
            parsed = parse_record(value, key, self.checks.max_message_bytes)
            if isinstance(parsed, Rejection):
                self._reject(out, parsed, offset, key, value)
            elif isinstance(parsed, Watermark):
                self._watermark(out, parsed, offset, producer_ms, key, value)
            else:
                self._batch(out, parsed, offset, producer_ms, key, value)
        except Exception as exc:  # a bug must neither stop the stage nor lose the record: dead-letter it
            self._reject(out, Rejection(STAGE_ERROR, f"{type(exc).__name__}: {exc}"[:1000]), offset, key, value)
        self.state[OFFSET_KEY] = offset

    def _reject(self, out: Outputs, rejection: Rejection, offset: int, key: bytes | None, value: bytes | None,
                sample_index: int | None = None) -> None:
        out.counts[rejection.reason] += 1
        # Per publishing agent, its dead-letter rate (a device clock has its own alert).
        if self.alerts is not None and rejection.reason != CLOCK_SKEW and key and b"/" in key:
            site, _, agent = key.decode(errors="replace").partition("/")
            counts = self.state.get(dead_key(site)) or {}
            self.state[dead_key(site)] = {**counts, agent: counts.get(agent, 0) + 1}
        out.dead.append((key, dead_letter(rejection, stage="validate", topic=self.topic, partition=self.partition,
                                          offset=offset, key=key, value=value, sample_index=sample_index)))

    def _batch(self, out: Outputs, batch: ParsedBatch, offset: int, producer_ms: int | None, key: bytes | None,
               value: bytes | None) -> None:
        site, state = batch.site, self.state
        clock: SiteClock | None = state.get(clock_key(site))
        rejected: dict[int, Rejection] = {}
        for i, sample in enumerate(batch.samples):
            if isinstance(sample, Rejection):
                rejected[i] = sample
                continue
            verdict = self._sample(site, clock, sample, producer_ms)
            if isinstance(verdict, Rejection):
                rejected[i] = verdict
                if verdict.reason == CLOCK_SKEW and self.alerts is not None and clock is not None:
                    # Its clock is what is wrong: only the derived inputs are judged.
                    if derived := self._derived_inputs(site, sample, epoch_ms(sample.ts), None, clock):
                        out.alerts.extend(self.alerts.observe_values(site, sample, derived, clock.watermark_ms))
                continue
            if self.alerts is not None:
                out.alerts.extend(self.alerts.observe(site, sample,
                                                      self._derived_inputs(site, sample, verdict.ts_ms, verdict, clock),
                                                      clock.watermark_ms if clock is not None else None))
            if clock is not None and epoch_ms(sample.ts) < clock.next_start_ms:
                out.counts["late"] += 1  # valid (it reaches the raw bucket), its window has closed
        out.counts["samples_valid"] += len(batch.samples) - len(rejected)
        out.counts["batches"] += 1
        if not rejected:
            out.valid.append((key, value))  # type: ignore[arg-type]  # a parsed batch has a value
            return
        items = batch.items if batch.items is not None else orjson.loads(value)["samples"]  # type: ignore[arg-type]
        for i, rejection in sorted(rejected.items()):
            # json, not orjson: a NaN the sensor sent stays NaN in the dead letter (orjson writes null)
            original = json.dumps(items[i], separators=(",", ":"), ensure_ascii=False).encode()
            self._reject(out, rejection, offset, key, original, sample_index=i)
        good = [item for i, item in enumerate(items) if i not in rejected]
        if good:  # the batch's replacement: its good samples only
            out.valid.append((key, orjson.dumps({"schema": TELEMETRY_SCHEMA, "site": site, "agent": batch.agent,
                                                 "samples": good})))

    def _derived_inputs(self, site: str, sample: Sample, ts_ms: int, device: DeviceState | None,
                        clock: SiteClock | None) -> dict[str, float] | None:
        """The derived inputs (streams/alertrules.py DERIVED) the rules of the sample's kind
        judge; of a device with no alert, only those outside the range no rule fires on."""
        assert self.alerts is not None
        kind = sample.kind.value
        bands = self._derived.get(kind)
        if bands is None:
            bands = self._derived[kind] = tuple((name, band) for name in DERIVED
                                                if (band := self.alerts.quiet_band(kind, name)) is not None)
        if not bands:
            return None
        held = self.alerts.holds(site, sample.device)
        derived: dict[str, float] = {}
        for name, (low, high) in bands:
            if name == "@clock_ahead_s":
                if clock is None:
                    continue
                value = (ts_ms - clock.watermark_ms) / 1000
            elif name == "@unchanged_s":
                if device is None:
                    continue
                value = (device.ts_ms - device.same_since_ms) / 1000
            elif name == "@heat_kw":
                if (heat := cdu_heat_kw(sample.metrics)) is None:
                    continue
                value = heat
            else:
                continue
            if held or not low <= value <= high:
                derived[name] = value
        return derived

    def _sample(self, site: str, clock: SiteClock | None, sample: Sample,
                producer_ms: int | None) -> Rejection | DeviceState:
        """The stateful rules for one sample; an accepted one is folded into its device (returned)."""
        ts = epoch_ms(sample.ts)
        verdict = sample_time_verdict(clock, ts, producer_ms, self.skew_ms, self.pause_ms)
        if verdict is not None:
            return verdict
        key = device_key(site, sample.device)
        device: DeviceState | None = self.state.get(key)
        known = device is not None
        if device is None:
            device = new_device(sample)
        elif sample.seq <= device.seq and ts <= device.ts_ms:
            return Rejection(DUPLICATE, f"seq {sample.seq} ts {iso_ms(ts)} is not newer than the last accepted "
                                        f"seq {device.seq} ts {iso_ms(device.ts_ms)}")
        device.seq, device.ts_ms = sample.seq, ts
        device.note_values(ts, sample.metrics)
        if clock is None or ts >= clock.next_start_ms:
            fold(device, ts, sample.metrics, self.window_ms)
        self.state[key] = device
        if not known:  # listed only once stored, so a failure above cannot leave a dangling name
            self.state[devices_key(site)] = sorted([*(self.state.get(devices_key(site)) or []), sample.device])
        return device

    def _watermark(self, out: Outputs, watermark: Watermark, offset: int, producer_ms: int | None,
                   key: bytes | None, value: bytes | None) -> None:
        site, ckey, hkey = watermark.site, clock_key(watermark.site), held_key(watermark.site)
        clock: SiteClock | None = self.state.get(ckey)
        held: int | None = self.state.get(hkey)
        rejection, moved, now_held = accept_watermark(clock, held, epoch_ms(watermark.ts), producer_ms, self.skew_ms,
                                                      self.pause_ms, self.window_ms)
        if rejection is not None:
            self._reject(out, rejection, offset, key, value)
            return
        if now_held != held:
            if now_held is None:
                del self.state[hkey]
            else:
                self.state[hkey] = now_held
        if moved is None or moved == clock:
            out.counts["watermarks_held" if now_held is not None and now_held != held else "watermarks"] += 1
            return
        out.counts["watermarks"] += 1
        starts, moved = due_windows(moved, self.window_ms, self.lateness_ms, self.cfg.max_gap_windows)
        for start in starts:
            self._close(out, site, start)
        if moved != clock:
            self.state[ckey] = moved
        if self.alerts is not None:
            self._site_alerts(out, site, clock, moved)

    def _site_alerts(self, out: Outputs, site: str, before: SiteClock | None, now: SiteClock) -> None:
        """On a watermark: the NoData rules of every device and rack, and each agent's dead-letter rate."""
        assert self.alerts is not None
        now_ms, racks = now.watermark_ms, {}
        if self.alerts.watches_silence:
            for name in self.state.get(devices_key(site)) or []:
                device: DeviceState = self.state[device_key(site, name)]
                row, cdu, feed = device.supply
                out.alerts.extend(self.alerts.silence(
                    site, Where(name, device.kind, device.hall, row, device.rack, cdu, feed), device.ts_ms, now_ms))
                if device.rack is not None:
                    racks.setdefault(device.rack, []).append((device.ts_ms, device.hall, row, cdu, feed))
            for rack, seen in racks.items():  # a rack is silent when its newest sample is old
                out.alerts.extend(self.alerts.silence(site, _rack_where(rack, seen), max(s[0] for s in seen), now_ms))
        counts: dict[str, int] | None = self.state.get(dead_key(site))
        if counts is None:
            return
        if before is None:  # no interval to divide by: the rate starts at the next watermark
            del self.state[dead_key(site)]
            return
        if now_ms <= before.watermark_ms:
            return
        per_min = 60_000 / (now_ms - before.watermark_ms)
        for agent, n in sorted(counts.items()):
            out.alerts.extend(self.alerts.observe_values(site, Where(agent, "agent"), {"@dead_letters_per_min": n * per_min},
                                                         now_ms))
        # Agents with an alert still open are judged again (at zero) until it resolves.
        still = {agent: 0 for agent in counts if self.alerts.holds(site, agent)}
        if still:
            self.state[dead_key(site)] = still
        else:
            del self.state[dead_key(site)]

    def _close(self, out: Outputs, site: str, start: int) -> None:
        state, end = self.state, start + self.window_ms
        names: list[str] = state.get(devices_key(site)) or []
        devices = [(name, state[device_key(site, name)]) for name in names]
        expected = [(n, d) for n, d in devices if d.ts_ms >= start - self.forget_ms]
        points, partial = close_window(site, expected, start, self.partition, self.partitions, self.cfg)
        out.results.extend(points)
        out.partials.append(partial)
        out.counts["windows_closed"] += 1
        kept = []
        for name, device in devices:
            if device.ts_ms < end - self.forget_ms:  # silent for long: no longer expected
                del state[device_key(site, name)]
                continue
            kept.append(name)
            prune(device, end)
            state[device_key(site, name)] = device
        if len(kept) != len(names):
            state[devices_key(site)] = kept
