"""The site's agents: turn a tick's plant readings into Telemetry messages, as real meters would.

Every power meter publishes instantaneous power and a cumulative energy register (as utility
meters, PDUs and DCGM do). Sensors add noise and quantisation; each device samples with its
own phase offset plus jitter. One message carries all metrics of one device (a server's
message carries its accelerators' power, utilisation, temperature and throttle bits as
`acc<i>_*` metrics). Message layout and metric names: docs/schema.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import orjson

from dcpulse.contract import TELEMETRY_SCHEMA, DeviceKind
from dcpulse.producers.faults import TickFaults
from dcpulse.producers.plant import HallLayout, SiteReadings
from dcpulse.producers.sitemodel import SiteSpec

Message = tuple[bytes, bytes]  # (key, value)
PHASE_SPREAD_S = 1.0  # devices sample at their own offset within the first second of a tick
JITTER_S = 0.05


class IsoClock:
    """ISO-8601 UTC with milliseconds, the 'YYYY-MM-DDTHH:MM:SS' part cached per second: a tick's thousands of
    samples fall within a few seconds, and formatting dates dominated the agents' cost."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, epoch_ms: int) -> str:
        second, ms = divmod(epoch_ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{ms:03d}Z"


class SiteAgents:
    """Per-device publishing state: sequence numbers, energy registers, phases, stuck values."""

    def __init__(self, site: SiteSpec, layouts: list[HallLayout], start_ms: int, rng: np.random.Generator) -> None:
        self.site = site
        self.key = site.name.encode()  # the Kafka key of every message: the site
        self.layouts = layouts
        self.start_ms = start_ms
        self.rng = rng
        self.seq: dict[str, int] = {}
        self.energy_kwh: dict[str, float] = {}
        self.server_energy = [np.zeros(len(lay.server_ids)) for lay in layouts]
        self.pdu_energy = [np.zeros(len(lay.rack_ids)) for lay in layouts]
        self.reset_offset: dict[str, float] = {}
        self.frozen: dict[str, dict[str, float]] = {}
        self.envelopes: dict[str, tuple[bytes, int]] = {}
        self.iso = IsoClock()
        self.malformed_sent = 0

    def _envelope(self, device: str, kind: DeviceKind, hall: str | None, row: str | None,
                  rack: str | None) -> tuple[bytes, int]:
        """Per device, once: the constant head of its JSON message, its sampling phase."""
        envelope = self.envelopes.get(device)
        if envelope is None:
            head = orjson.dumps({"schema": TELEMETRY_SCHEMA, "site": self.site.name, "hall": hall, "row": row,
                                 "rack": rack, "device": device, "kind": kind.value})[:-1] + b","
            envelope = (head, int(self.rng.uniform(0, PHASE_SPREAD_S) * 1000))
            self.envelopes[device] = envelope
        return envelope

    def _message(self, device: str, kind: DeviceKind, t_ms: int, metrics: dict[str, float],
                 faults: TickFaults, hall: str | None = None, row: str | None = None,
                 rack: str | None = None) -> Message | None:
        if device in faults.dropout:
            return None
        if device in faults.stuck:
            metrics = self.frozen.setdefault(device, metrics)
        elif device in self.frozen:
            del self.frozen[device]
        if self.reset_offset and device in self.reset_offset:
            metrics = {k: (round(v - self.reset_offset[device], 3) if k.endswith("energy_kwh") else v)
                       for k, v in metrics.items()}
        head, phase = self._envelope(device, kind, hall, row, rack)
        seq = self.seq.get(device, 0)
        self.seq[device] = seq + 1
        ts = t_ms + phase + int(self.rng.normal(0, JITTER_S) * 1000)
        if faults.skew_s and device in faults.skew_s:
            ts += int(faults.skew_s[device] * 1000)
        # Same bytes as orjson.dumps of the whole message, without re-encoding the constant head.
        return self.key, b"".join((head, b'"seq":%d,"ts":"%s","metrics":' % (seq, self.iso(ts).encode()),
                              orjson.dumps(metrics), b"}"))

    def _register(self, device: str, power_w: float, dt_s: float) -> float:
        value = self.energy_kwh.get(device, 0.0) + power_w * dt_s / 3.6e6
        self.energy_kwh[device] = value
        return round(value, 3)

    def _noisy(self, value: float, rel: float = 0.005) -> float:
        return value * (1.0 + self.rng.normal(0.0, rel))

    def emit(self, t_s: float, dt_s: float, rd: SiteReadings, faults: TickFaults) -> Iterator[Message]:
        """All devices' samples for the interval that ends at t_s (energy integrated over dt_s)."""
        for device in faults.counter_resets:
            self.reset_offset[device] = self._current_register(device)
        t_ms = self.start_ms + int(round(t_s * 1000))
        yield from self._site_devices(t_ms, dt_s, rd, faults)
        for h, (lay, hr) in enumerate(zip(self.layouts, rd.halls, strict=True)):
            hall = lay.spec.name
            ups = f"ups-{hall}"
            msg = self._message(ups, DeviceKind.UPS, t_ms, {
                "output_power_kw": round(self._noisy(hr.ups_out_w) / 1000, 2),
                "output_energy_kwh": self._register(ups + ":out", hr.ups_out_w, dt_s),
                "input_power_kw": round(self._noisy(hr.ups_in_w) / 1000, 2),
                "input_energy_kwh": self._register(ups + ":in", hr.ups_in_w, dt_s),
                "load_pct": round(100 * hr.ups_out_w / lay.ups_rated_w, 1),
            }, faults, hall=hall)
            if msg:
                yield msg
            # Rack PDUs (category 2 metering).
            self.pdu_energy[h] += hr.pdu_out_w * dt_s / 3.6e6
            pdu_kw = np.round(hr.pdu_out_w * (1 + self.rng.normal(0, 0.005, hr.pdu_out_w.size)) / 1000, 2).tolist()
            pdu_kwh = np.round(self.pdu_energy[h], 3).tolist()
            for r, rack in enumerate(lay.rack_ids):
                msg = self._message(f"pdu-{rack}", DeviceKind.PDU, t_ms,
                                    {"power_kw": pdu_kw[r], "energy_kwh": pdu_kwh[r],
                                     "rated_kw": lay.spec.rack_provisioned_kw},
                                    faults, hall=hall, row=lay.rack_row[r], rack=rack)
                if msg:
                    yield msg
            yield from self._servers(h, lay, hr, t_ms, dt_s, faults)
            yield from self._cooling(lay, hr, t_ms, dt_s, faults)
        if faults.malformed:
            yield from self._malformed(faults.malformed, t_ms)

    def _current_register(self, device: str) -> float:
        for h, lay in enumerate(self.layouts):
            if device.startswith("pdu-") and device[4:] in lay.rack_ids:
                return float(self.pdu_energy[h][lay.rack_ids.index(device[4:])])
            if device in lay.server_ids:
                return float(self.server_energy[h][lay.server_ids.index(device)])
        return self.energy_kwh.get(device, 0.0)

    def _site_devices(self, t_ms: int, dt_s: float, rd: SiteReadings, faults: TickFaults) -> Iterator[Message]:
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
                "load_kw": round(rd.chiller_load_w / 1000, 1), "running": float(rd.chiller_running)}),
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
        for device, kind, metrics in devices:
            msg = self._message(device, kind, t_ms, metrics, faults)
            if msg:
                yield msg

    def _servers(self, h: int, lay: HallLayout, hr, t_ms: int, dt_s: float, faults: TickFaults) -> Iterator[Message]:
        n, a = hr.acc_power_w.shape
        self.server_energy[h] += hr.server_input_w * dt_s / 3.6e6
        rng = self.rng
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
        hall = lay.spec.name
        for s, server in enumerate(lay.server_ids):
            values = [power[s], energy[s], cpu[s], host[s], inlet[s], outlet[s], fan[s], *acc[s]]
            r = int(lay.server_rack[s])
            msg = self._message(server, DeviceKind.SERVER, t_ms, dict(zip(names, values, strict=True)), faults,
                                hall=hall, row=lay.rack_row[r], rack=lay.rack_ids[r])
            if msg:
                yield msg

    def _cooling(self, lay: HallLayout, hr, t_ms: int, dt_s: float, faults: TickFaults) -> Iterator[Message]:
        hall = lay.spec.name
        for i, cdu in enumerate(lay.cdu_ids):
            msg = self._message(cdu, DeviceKind.CDU, t_ms, {
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
            }, faults, hall=hall)
            if msg:
                yield msg
            msg = self._message(f"leak-{cdu}", DeviceKind.LEAK_SENSOR, t_ms,
                                {"leak": float(hr.cdu_leak[i])}, faults, hall=hall)
            if msg:
                yield msg
        per_unit = hr.crah_fan_w / len(lay.crah_ids)
        for crah in lay.crah_ids:
            msg = self._message(crah, DeviceKind.CRAH, t_ms, {
                "fan_power_kw": round(self._noisy(per_unit) / 1000, 2),
                "energy_kwh": self._register(crah, per_unit, dt_s),
                "supply_air_c": round(hr.crah_supply_c + self.rng.normal(0, 0.1), 1),
                "return_air_c": round(hr.crah_return_c + self.rng.normal(0, 0.1), 1),
            }, faults, hall=hall)
            if msg:
                yield msg

    def _malformed(self, count: int, t_ms: int) -> Iterator[Message]:
        """Bad input for the downstream validation: one of each kind in turn."""
        good = {"schema": TELEMETRY_SCHEMA, "site": self.site.name, "device": "facility-meter",
                "kind": "facility_meter", "seq": 0, "ts": self.iso(t_ms), "metrics": {"power_kw": 1.0}}
        variants = [
            lambda: b"\x00\xffnot json at all",
            lambda: orjson.dumps(good)[:-7],
            lambda: orjson.dumps(good).replace(b'"power_kw":1.0', b'"power_kw":NaN'),
            lambda: orjson.dumps({**good, "seq": "seven"}),
            lambda: orjson.dumps({k: v for k, v in good.items() if k != "ts"}),
            lambda: orjson.dumps({**good, "metrics": {f"m{i}": float(i) for i in range(9000)}}),
            lambda: orjson.dumps({**good, "metrics": {"power_kw": -1.0e9}}),
        ]
        for _ in range(count):
            yield self.key, variants[self.malformed_sent % len(variants)]()
            self.malformed_sent += 1
