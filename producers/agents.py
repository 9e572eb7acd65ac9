"""The site's agents: turn a tick's plant readings into telemetry batches, as real meters would.

Each agent publishes one `dcpulse.telemetry/2` batch per tick, keyed `<site>/<agent>`
(`agent_key`), so one agent's samples stay in order while a site's agents spread over every
partition:
- a rack agent `rack-<rack>`: the rack's PDU, then its servers (a server's sample carries its
  accelerators' power, utilisation, temperature and throttle bits as `acc<i>_*` metrics);
- a hall agent `hall-<hall>`: the hall's UPS, each CDU followed by its leak sensor, the CRAHs;
- the facility agent `facility`: facility meter, chiller, heat rejection, facility pump, water
  meter, weather.
Every power meter publishes instantaneous power and a cumulative energy register (as utility
meters, PDUs and DCGM do). Sensors add noise and quantisation; each device samples with its own
phase offset plus jitter. A dropped-out device leaves its batch; a batch left with no sample is
not sent. Batch layout and metric names: docs/schema.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import orjson

from dcpulse.contract import MAX_MESSAGE_BYTES, TELEMETRY_SCHEMA, DeviceKind, agent_key
from dcpulse.producers.faults import TickFaults
from dcpulse.producers.plant import HallLayout, HallReadings, SiteReadings
from dcpulse.producers.sitemodel import SiteSpec

Message = tuple[bytes, bytes]  # (key, value)
PHASE_SPREAD_S = 1.0  # devices sample at their own offset within the first second of a tick
JITTER_S = 0.05
# 20 standard deviations of the jitter: no sample of a later tick is stamped before the watermark.
WATERMARK_MARGIN_MS = 1000
FACILITY_AGENT = "facility"


def agent_for(hall: str | None, rack: str | None) -> str:
    """The agent that publishes a device's samples, from the device's location: its rack's agent,
    else its hall's, else the facility agent. Replay converts v1 records with the same rule."""
    if rack is not None:
        return f"rack-{rack}"
    if hall is not None:
        return f"hall-{hall}"
    return FACILITY_AGENT


def watermark_ms(tick_ms: int, dt_s: float) -> int:
    """The event time a site's producer promises after publishing tick `tick_ms`: no sample of
    the site stamped earlier will follow.

    The next tick's samples are stamped (tick + dt) + phase (0 .. PHASE_SPREAD_S) + jitter
    (N(0, JITTER_S)); the watermark is WATERMARK_MARGIN_MS before the next tick, so only a clock
    fault (a device whose clock runs behind) can ever publish a sample behind it.
    """
    return tick_ms + round(dt_s * 1000) - WATERMARK_MARGIN_MS


class Place(NamedTuple):
    """Where a device sits in the plant: what its samples say about location and supply, so
    alerts carry the rack, the CDU that cools it and the UPS feed that powers it."""

    hall: str | None = None
    row: str | None = None
    rack: str | None = None
    cdu: str | None = None
    feed: str | None = None


NOWHERE = Place()


def ups_id(hall: str) -> str:
    return f"ups-{hall}"


class Emitted(NamedTuple):
    """One tick of a site's agents: a message per agent (plus any malformed ones), and how many
    device samples they carry."""

    messages: list[Message]
    samples: int


class IsoClock:
    """ISO-8601 UTC with milliseconds, the 'YYYY-MM-DDTHH:MM:SS' part cached per second: a tick's thousands of
    samples fall within a few seconds (in device order, not time order), and formatting dates
    dominated the agents' cost."""

    def __init__(self) -> None:
        self._prefixes: dict[int, str] = {}

    def __call__(self, epoch_ms: int) -> str:
        second, ms = divmod(epoch_ms, 1000)
        prefix = self._prefixes.get(second)
        if prefix is None:
            if len(self._prefixes) > 64:
                self._prefixes.clear()
            prefix = self._prefixes[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{prefix}.{ms:03d}Z"


class SiteAgents:
    """Per-device publishing state (sequence numbers, energy registers, phases, stuck values) and
    the byte-level fast path: each device's and each agent's constant JSON is encoded once, and a
    tick only formats what changes."""

    def __init__(self, site: SiteSpec, layouts: list[HallLayout], rng: np.random.Generator) -> None:
        self.site = site
        self.layouts = layouts
        self.rng = rng
        self.seq: dict[str, int] = {}
        self.energy_kwh: dict[str, float] = {}
        self.server_energy = [np.zeros(len(lay.server_ids)) for lay in layouts]
        self.pdu_energy = [np.zeros(len(lay.rack_ids)) for lay in layouts]
        self.reset_offset: dict[str, float] = {}
        self.frozen: dict[str, dict[str, float]] = {}
        self.envelopes: dict[str, tuple[bytes, int]] = {}
        self.batch_heads: dict[str, tuple[bytes, bytes]] = {}
        self.iso = IsoClock()
        self.malformed_sent = 0

    def _envelope(self, device: str, kind: DeviceKind, place: Place) -> tuple[bytes, int]:
        """Per device, once: the constant head of its sample's JSON, its sampling phase."""
        envelope = self.envelopes.get(device)
        if envelope is None:
            fields = {"device": device, "kind": kind.value, **place._asdict()}
            head = orjson.dumps({k: v for k, v in fields.items() if v is not None})[:-1] + b","
            envelope = (head, int(self.rng.uniform(0, PHASE_SPREAD_S) * 1000))
            self.envelopes[device] = envelope
        return envelope

    def _sample(self, device: str, kind: DeviceKind, t_ms: int, jitter_ms: int, metrics: dict[str, float],
                faults: TickFaults, place: Place = NOWHERE) -> bytes | None:
        """One device's sample as JSON bytes, or None while the device drops out."""
        if device in faults.dropout:
            return None
        if device in faults.stuck:
            metrics = self.frozen.setdefault(device, metrics)
        elif device in self.frozen:
            del self.frozen[device]
        if self.reset_offset and device in self.reset_offset:
            metrics = {k: (round(v - self.reset_offset[device], 3) if k.endswith("energy_kwh") else v)
                       for k, v in metrics.items()}
        head, phase = self._envelope(device, kind, place)
        seq = self.seq.get(device, 0)
        self.seq[device] = seq + 1
        ts = t_ms + phase + jitter_ms
        if faults.skew_s and device in faults.skew_s:
            ts += int(faults.skew_s[device] * 1000)
        # Same bytes as orjson.dumps of the whole sample, without re-encoding the constant head.
        return b"".join((head, b'"seq":%d,"ts":"%s","metrics":' % (seq, self.iso(ts).encode()),
                         orjson.dumps(metrics), b"}"))

    def _jitter_ms(self, n: int) -> list[int]:
        return (self.rng.normal(0.0, JITTER_S, n) * 1000).astype(np.int64).tolist()

    def _batch(self, out: list[Message], agent: str, samples: list[bytes | None]) -> int:
        """Append the agent's batch of the samples that were taken; returns their count."""
        taken = [s for s in samples if s is not None]
        if not taken:
            return 0
        heads = self.batch_heads.get(agent)
        if heads is None:
            heads = (agent_key(self.site.name, agent).encode(),
                     orjson.dumps({"schema": TELEMETRY_SCHEMA, "site": self.site.name, "agent": agent})[:-1]
                     + b',"samples":[')
            self.batch_heads[agent] = heads
        out.append((heads[0], b"".join((heads[1], b",".join(taken), b"]}"))))
        return len(taken)

    def _register(self, device: str, power_w: float, dt_s: float) -> float:
        value = self.energy_kwh.get(device, 0.0) + power_w * dt_s / 3.6e6
        self.energy_kwh[device] = value
        return round(value, 3)

    def _noisy(self, value: float, rel: float = 0.005) -> float:
        return value * (1.0 + self.rng.normal(0.0, rel))

    def emit(self, t_ms: int, dt_s: float, rd: SiteReadings, faults: TickFaults) -> Emitted:
        """Every agent's batch for the interval that ends at t_ms (energy integrated over dt_s)."""
        for device in faults.counter_resets:
            self.reset_offset[device] = self._current_register(device)
        out: list[Message] = []
        samples = self._batch(out, FACILITY_AGENT, self._facility(t_ms, dt_s, rd, faults))
        for h, (lay, hr) in enumerate(zip(self.layouts, rd.halls, strict=True)):
            samples += self._batch(out, agent_for(lay.spec.name, None), self._hall(lay, hr, t_ms, dt_s, faults))
            for agent, rack_samples in self._racks(h, lay, hr, t_ms, dt_s, faults):
                samples += self._batch(out, agent, rack_samples)
        if faults.malformed:
            self._malformed(out, faults.malformed, t_ms)
        return Emitted(out, samples)

    def _current_register(self, device: str) -> float:
        for h, lay in enumerate(self.layouts):
            if device.startswith("pdu-") and device[4:] in lay.rack_ids:
                return float(self.pdu_energy[h][lay.rack_ids.index(device[4:])])
            if device in lay.server_ids:
                return float(self.server_energy[h][lay.server_ids.index(device)])
        return self.energy_kwh.get(device, 0.0)

    def _facility(self, t_ms: int, dt_s: float, rd: SiteReadings, faults: TickFaults) -> list[bytes | None]:
        p = self.site.plant
        rejection = "tower-1" if p.heat_rejection == "cooling_tower" else "drycooler-1"
        rejection_kind = DeviceKind.COOLING_TOWER if p.heat_rejection == "cooling_tower" else DeviceKind.DRY_COOLER
        self.energy_kwh["water-meter:l"] = self.energy_kwh.get("water-meter:l", 0.0) + rd.make_up_l_s * dt_s
        devices = [
            ("facility-meter", DeviceKind.FACILITY_METER, {
                "power_kw": round(self._noisy(rd.facility_w) / 1000, 2),
                "energy_kwh": self._register("facility-meter", rd.facility_w, dt_s)}),
            ("chiller-1", DeviceKind.CHILLER, {
                "power_kw": round(rd.chiller_w / 1000, 2), "energy_kwh": self._register("chiller-1", rd.chiller_w, dt_s),
                "load_kw": round(rd.chiller_load_w / 1000, 1), "running": float(rd.chiller_running),
                "demand_kw": round(rd.chiller_demand_w / 1000, 1)}),
            (rejection, rejection_kind, {
                "fan_power_kw": round(self._noisy(rd.rejection_fan_w) / 1000, 2),
                "energy_kwh": self._register(rejection, rd.rejection_fan_w, dt_s),
                "leaving_water_c": round(rd.rejection_leaving_c + self.rng.normal(0, 0.1), 1),
                "economiser_share": round(rd.economiser_share, 3)}),
            ("pump-facility", DeviceKind.PUMP, {
                "power_kw": round(self._noisy(rd.facility_pump_w) / 1000, 2),
                "energy_kwh": self._register("pump-facility", rd.facility_pump_w, dt_s),
                "flow_l_min": round(rd.facility_flow_l_min, 0)}),
            ("water-meter", DeviceKind.WATER_METER, {
                "flow_l_min": round(rd.make_up_l_s * 60, 1),
                "volume_l": round(self.energy_kwh["water-meter:l"], 1)}),
            ("weather", DeviceKind.WEATHER, {
                "dry_bulb_c": round(rd.dry_bulb_c + self.rng.normal(0, 0.1), 1),
                "wet_bulb_c": round(rd.wet_bulb_c + self.rng.normal(0, 0.1), 1)}),
        ]
        jitter = self._jitter_ms(len(devices))
        return [self._sample(device, kind, t_ms, j, metrics, faults)
                for (device, kind, metrics), j in zip(devices, jitter, strict=True)]

    def _hall(self, lay: HallLayout, hr: HallReadings, t_ms: int, dt_s: float,
              faults: TickFaults) -> list[bytes | None]:
        hall = lay.spec.name
        jitter = iter(self._jitter_ms(1 + 2 * len(lay.cdu_ids) + len(lay.crah_ids)))
        ups = ups_id(hall)
        samples = [self._sample(ups, DeviceKind.UPS, t_ms, next(jitter), {
            "output_power_kw": round(self._noisy(hr.ups_out_w) / 1000, 2),
            "output_energy_kwh": self._register(ups + ":out", hr.ups_out_w, dt_s),
            "input_power_kw": round(self._noisy(hr.ups_in_w) / 1000, 2),
            "input_energy_kwh": self._register(ups + ":in", hr.ups_in_w, dt_s),
            "load_pct": round(100 * hr.ups_out_w / lay.ups_rated_w, 1),
        }, faults, Place(hall, feed=ups))]
        for i, cdu in enumerate(lay.cdu_ids):
            samples.append(self._sample(cdu, DeviceKind.CDU, t_ms, next(jitter), {
                "supply_c": round(float(hr.cdu_supply_c[i]) + self.rng.normal(0, 0.05), 2),
                "return_c": round(float(hr.cdu_return_c[i]) + self.rng.normal(0, 0.05), 2),
                "flow_l_min": round(self._noisy(float(hr.cdu_flow_l_min[i])), 1),
                "dp_bar": round(self._noisy(float(hr.cdu_dp_bar[i])), 3),
                "pressure_bar": round(self._noisy(float(hr.cdu_pressure_bar[i]), 0.002), 3),
                "level_pct": round(float(hr.cdu_level_pct[i]), 1),
                "pumps_running": float(hr.cdu_pumps_running[i]),
                "capacity_kw": round(float(lay.cdu_design_kw[i]) * 1.25, 1),
                "power_kw": round(float(hr.cdu_pump_w[i]) / 1000, 3),
                "energy_kwh": self._register(cdu, float(hr.cdu_pump_w[i]), dt_s),
            }, faults, Place(hall, cdu=cdu)))
            samples.append(self._sample(f"leak-{cdu}", DeviceKind.LEAK_SENSOR, t_ms, next(jitter),
                                        {"leak": float(hr.cdu_leak[i])}, faults, Place(hall, cdu=cdu)))
        per_unit = hr.crah_fan_w / len(lay.crah_ids)
        for crah in lay.crah_ids:
            samples.append(self._sample(crah, DeviceKind.CRAH, t_ms, next(jitter), {
                "fan_power_kw": round(self._noisy(per_unit) / 1000, 2),
                "energy_kwh": self._register(crah, per_unit, dt_s),
                "supply_air_c": round(hr.crah_supply_c + self.rng.normal(0, 0.1), 1),
                "return_air_c": round(hr.crah_return_c + self.rng.normal(0, 0.1), 1),
            }, faults, Place(hall)))
        return samples

    def _racks(self, h: int, lay: HallLayout, hr: HallReadings, t_ms: int, dt_s: float,
               faults: TickFaults) -> list[tuple[str, list[bytes | None]]]:
        """Per rack agent: its PDU's sample (category 2 metering), then its servers'."""
        n, a = hr.acc_power_w.shape
        rng = self.rng
        self.pdu_energy[h] += hr.pdu_out_w * dt_s / 3.6e6
        self.server_energy[h] += hr.server_input_w * dt_s / 3.6e6
        pdu_kw = np.round(hr.pdu_out_w * (1 + rng.normal(0, 0.005, hr.pdu_out_w.size)) / 1000, 2).tolist()
        pdu_kwh = np.round(self.pdu_energy[h], 3).tolist()
        power = np.round(hr.server_input_w * (1 + rng.normal(0, 0.005, n))).tolist()
        energy = np.round(self.server_energy[h], 3).tolist()
        cpu = np.round(np.clip(hr.cpu_util, 0, 1), 3).tolist()
        inlet = np.round(hr.inlet_c + rng.normal(0, 0.1, n), 1).tolist()
        outlet = np.round(hr.outlet_c + rng.normal(0, 0.1, n), 1).tolist()
        fan = np.round(hr.server_fan_w).tolist()
        host = np.round(hr.host_w * (1 + rng.normal(0, 0.005, n))).tolist()
        acc = np.stack([np.round(hr.acc_power_w * (1 + rng.normal(0, 0.005, (n, a)))),
                        np.round(hr.acc_util, 3),
                        np.round(hr.acc_temp_c + rng.normal(0, 0.2, (n, a))),
                        hr.acc_throttle.astype(float)], axis=2).reshape(n, 4 * a).tolist()
        names = ["power_w", "energy_kwh", "cpu_util", "cpu_power_w", "inlet_c", "outlet_c", "fan_w"] + [
            f"acc{i}_{m}" for i in range(a) for m in ("power_w", "util", "temp_c", "throttle")]
        pdu_jitter = self._jitter_ms(len(lay.rack_ids))
        server_jitter = self._jitter_ms(n)
        hall, per_rack, rated_kw = lay.spec.name, lay.spec.servers_per_rack, lay.spec.rack_provisioned_kw
        sample = self._sample
        racks = []
        feed = ups_id(hall)
        for r, rack in enumerate(lay.rack_ids):
            place = Place(hall, lay.rack_row[r], rack, lay.cdu_ids[lay.rack_cdu[r]] if lay.cdu_ids else None, feed)
            samples = [sample(f"pdu-{rack}", DeviceKind.PDU, t_ms, pdu_jitter[r],
                              {"power_kw": pdu_kw[r], "energy_kwh": pdu_kwh[r], "rated_kw": rated_kw},
                              faults, place)]
            for s in range(r * per_rack, (r + 1) * per_rack):
                values = [power[s], energy[s], cpu[s], host[s], inlet[s], outlet[s], fan[s], *acc[s]]
                samples.append(sample(lay.server_ids[s], DeviceKind.SERVER, t_ms, server_jitter[s],
                                      dict(zip(names, values, strict=True)), faults, place))
            racks.append((agent_for(hall, rack), samples))
        return racks

    def _malformed(self, out: list[Message], count: int, t_ms: int) -> None:
        """Bad input for the validation stage, one kind after another: records that are not a
        batch document (dead-lettered whole: garbage, truncated JSON, a NaN literal, which JSON
        does not allow, a missing field, oversize), and a bad sample added to one of this tick's
        good batches (dead-lettered alone while its siblings go on; each goes to the next batch)."""
        probe = {"device": "malformed-probe", "kind": "facility_meter", "seq": 0, "ts": self.iso(t_ms),
                 "metrics": {"power_kw": 1.0}}
        batch = {"schema": TELEMETRY_SCHEMA, "site": self.site.name, "agent": FACILITY_AGENT, "samples": [probe]}
        # (whole record?, bytes): the two classes alternate.
        variants: list[tuple[bool, Callable[[], bytes]]] = [
            (True, lambda: b"\x00\xffnot json at all"),
            (False, lambda: orjson.dumps({**probe, "seq": "seven"})),
            (True, lambda: orjson.dumps(batch)[:-7]),
            (False, lambda: orjson.dumps({**probe, "metrics": {"power_kw": -1.0e9}})),
            (True, lambda: orjson.dumps(batch).replace(b'"power_kw":1.0', b'"power_kw":NaN')),
            (False, lambda: orjson.dumps({k: v for k, v in probe.items() if k != "ts"})),
            (True, lambda: orjson.dumps({k: v for k, v in batch.items() if k != "samples"})),
            (False, lambda: orjson.dumps({**probe, "firmware": "1.2"})),
            (True, lambda: orjson.dumps({**batch, "samples": [{**probe, "metrics": {
                f"m{i:06d}": float(i) for i in range(MAX_MESSAGE_BYTES // 12)}}]})),
        ]
        key = agent_key(self.site.name, FACILITY_AGENT).encode()
        good, injected = len(out), 0
        for _ in range(count):
            whole, variant = variants[self.malformed_sent % len(variants)]
            if whole:
                out.append((key, variant()))
            elif good:
                target, value = out[injected % good]
                out[injected % good] = (target, value[:-2] + b"," + variant() + b"]}")
                injected += 1
            self.malformed_sent += 1
