"""Site model: what a simulated computing centre is made of, validated by pydantic.

site -> halls -> rows -> racks -> servers with accelerators; each hall has rack PDUs, a UPS
system, CDUs with liquid loops (liquid-cooled halls) and CRAHs (air side); the site has heat
rejection (cooling towers or dry coolers, with chillers as trim), facility pumps, a make-up
water meter and outdoor weather. Defaults are the domain reference's default parameters.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcpulse.contract import Name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AcceleratorModel(Strict):
    name: str
    kind: Literal["gpu", "npu"] = "gpu"
    tdp_w: float = Field(700.0, gt=0)
    idle_w: float = Field(80.0, ge=0)
    r_th_k_per_w: float = Field(0.04, gt=0, description="Cold plate (or heat sink) to junction")
    throttle_c: float = Field(87.0, description="Thermal slowdown starts here")
    alpha: float = Field(1.0, gt=0, description="Utilisation exponent of dynamic power")

    @model_validator(mode="after")
    def _idle_below_tdp(self) -> AcceleratorModel:
        if self.idle_w >= self.tdp_w:
            raise ValueError("idle_w must be below tdp_w")
        return self


class ServerModel(Strict):
    name: str
    accelerator: AcceleratorModel
    accelerators: int = Field(8, ge=0, le=16)
    base_w: float = Field(2000.0, ge=0, description="CPUs, memory, NICs, storage at full CPU load")
    fan_max_w: float = Field(600.0, ge=0, description="Server fans at full speed (air) ")
    psu_rated_w: float = Field(3000.0, gt=0)
    psu_count: int = Field(4, ge=1, description="N+N redundant supplies share the load")

    def max_dc_w(self) -> float:
        return self.accelerators * self.accelerator.tdp_w + self.base_w + self.fan_max_w


class HallSpec(Strict):
    name: Name
    rows: int = Field(ge=1)
    racks_per_row: int = Field(ge=1)
    servers_per_rack: int = Field(ge=1)
    server: ServerModel
    cooling: Literal["liquid", "air"]
    f_liq: float = Field(0.8, ge=0, le=1, description="Share of IT heat taken by cold plates")
    rack_provisioned_kw: float = Field(gt=0)
    # Liquid side (technology cooling system, one CDU per `racks_per_cdu` racks).
    tcs_supply_c: float = Field(32.0, ge=17, le=45, description="ASHRAE W32 class by default")
    racks_per_cdu: int = Field(8, ge=1)
    cdu_flow_l_min_per_kw: float = Field(1.5, gt=0, description="OCP guideline 1.5 L/min/kW")
    cdu_dp_bar: float = Field(2.5, gt=0)
    cdu_pressure_bar: float = Field(3.5, gt=0)
    cdu_pumps: int = Field(2, ge=1, description="N+1: one running pump can carry the loop")
    loop_thermal_mass_j_per_k_per_mw: float = Field(1.0e6, gt=0)
    # Air side.
    air_supply_c: float = Field(22.0, ge=10, le=35)
    crah_water_c: float = Field(10.0, description="CRAH coil water supply (chilled or warm)")
    crah_air_dt_k: float = Field(12.0, gt=0)
    crah_units: int = Field(4, ge=1)
    crah_fan_w_per_m3_s: float = Field(700.0, gt=0, description="EC fan power per m3/s at design flow")
    recirculation_k: float = Field(2.0, ge=0, description="Inlet rise over supply (containment)")
    ups_efficiency_coefficients: tuple[float, float, float] = Field(
        (0.012, 0.015, 0.01), description="APC WP113 a, b, c of the hall's UPS system")

    @property
    def racks(self) -> int:
        return self.rows * self.racks_per_row

    @property
    def servers(self) -> int:
        return self.racks * self.servers_per_rack

    @property
    def cdus(self) -> int:
        return 0 if self.cooling == "air" else -(-self.racks // self.racks_per_cdu)

    @property
    def liquid_share(self) -> float:
        return self.f_liq if self.cooling == "liquid" else 0.0

    def design_it_kw(self) -> float:
        """Nameplate-ish IT load: every server at 80 % of its maximum DC draw (sustained/rated)."""
        return self.servers * self.server.max_dc_w() * 0.8 / 1000.0


class PlantSpec(Strict):
    heat_rejection: Literal["cooling_tower", "dry_cooler"] = "cooling_tower"
    tower_approach_k: float = Field(4.0, ge=1)
    dry_cooler_approach_k: float = Field(6.0, ge=1)
    hx_approach_k: float = Field(1.5, ge=0)
    cdu_approach_k: float = Field(4.0, ge=1)
    heat_rejection_fan_kw_per_kw: float = Field(0.057, gt=0, description="At design load (BAC)")
    chiller_cop_ref: float = Field(5.5, gt=0)
    chiller_margin: float = Field(1.2, ge=1, description="Chiller capacity over design heat")
    design_margin: float = Field(1.2, ge=1, description="Heat-rejection capacity over design IT")
    pump_efficiency: float = Field(0.65, gt=0, le=1)
    facility_dp_bar: float = Field(2.0, gt=0)
    facility_range_k: float = Field(8.0, gt=0, description="Facility water return - supply")
    pdu_loss_fraction: float = Field(0.015, ge=0, lt=0.1)
    misc_fraction: float = Field(0.01, ge=0, lt=0.1, description="Lighting, security, lifts")
    cycles_of_concentration: float = Field(4.0, gt=1)
    evaporation_l_per_kwh: float = Field(1.5, gt=0)


class WeatherSpec(Strict):
    mean_dry_bulb_c: float = 24.0
    daily_amplitude_k: float = Field(4.0, ge=0)
    wet_bulb_depression_k: float = Field(4.0, ge=0.5)
    depression_amplitude_k: float = Field(1.5, ge=0)


class WorkloadSpec(Strict):
    training_share: float = Field(0.6, ge=0, le=1, description="Share of racks running training")
    inference_share: float = Field(0.25, ge=0, le=1)
    training_duty: float = Field(0.7, gt=0, le=1, description="Compute share of an iteration")
    comm_util: float = Field(0.1, ge=0, le=1, description="Utilisation during communication")
    job_racks: tuple[int, int] = Field((2, 16), description="Racks per training job (min, max)")
    job_mean_hours: float = Field(6.0, gt=0)
    checkpoint_every_s: float = Field(1800.0, gt=0)
    checkpoint_s: float = Field(60.0, gt=0)
    inference_peak: float = Field(0.75, ge=0, le=1)
    inference_trough: float = Field(0.25, ge=0, le=1)
    idle_util: float = Field(0.02, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self) -> WorkloadSpec:
        if self.training_share + self.inference_share > 1:
            raise ValueError("training_share + inference_share must be <= 1")
        return self


class SiteSpec(Strict):
    name: Name
    region: str = ""
    source: str = Field(description="The public figure this site is modelled on")
    assumptions: list[str] = Field(default_factory=list)
    pue_target: float = Field(1.25, ge=1)
    sample_interval_s: float = Field(10.0, ge=1, le=300)
    halls: list[HallSpec] = Field(min_length=1)
    plant: PlantSpec = PlantSpec()
    weather: WeatherSpec = WeatherSpec()
    workload: WorkloadSpec = WorkloadSpec()

    @model_validator(mode="after")
    def _unique_halls(self) -> SiteSpec:
        names = [h.name for h in self.halls]
        if len(set(names)) != len(names):
            raise ValueError(f"hall names must be unique in site {self.name}")
        return self

    def counts(self) -> dict[str, float]:
        return {
            "halls": len(self.halls),
            "racks": sum(h.racks for h in self.halls),
            "servers": sum(h.servers for h in self.halls),
            "accelerators": sum(h.servers * h.server.accelerators for h in self.halls),
            "design_it_kw": round(sum(h.design_it_kw() for h in self.halls), 1),
        }


class FaultSpec(Strict):
    kind: Literal[
        "cdu_pump_failure", "coolant_leak", "filter_clog", "chiller_trip", "hot_spot",
        "stuck_sensor", "sensor_dropout", "clock_skew", "counter_reset", "malformed",
    ]
    site: Name
    target: str | None = Field(None, description="Device id (e.g. cdu-h1-01, rack id); default: first fitting")
    start_s: float = Field(0.0, ge=0, description="Seconds after the scenario start")
    duration_s: float = Field(600.0, gt=0)
    magnitude: float | None = Field(None, description="Kind-specific: skew seconds, hot-spot K, rate ...")

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


class Scenario(Strict):
    seed: int = 7
    start: datetime = datetime(2026, 7, 1, tzinfo=UTC)
    sites: list[SiteSpec] = Field(min_length=1)
    faults: list[FaultSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fault_sites_exist(self) -> Scenario:
        names = {s.name for s in self.sites}
        if len(names) != len(self.sites):
            raise ValueError("site names must be unique")
        for fault in self.faults:
            if fault.site not in names:
                raise ValueError(f"fault {fault.kind} names unknown site {fault.site!r}")
        return self


PRESET_PACKAGE = "dcpulse.producers.presets"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(PRESET_PACKAGE).iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> SiteSpec:
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    text = resources.files(PRESET_PACKAGE).joinpath(f"{name}.toml").read_text()
    return SiteSpec.model_validate(tomllib.loads(text))


def preset_thresholds() -> dict[str, dict[str, float]]:
    """Per preset site, the thresholds alert rules may take from the site model (`threshold_from`)."""
    return {spec.name: {"pue_target": spec.pue_target} for spec in map(load_preset, preset_names())}


def load_scenario(path: Path) -> Scenario:
    """A scenario file: [[sites]] tables (or `preset = "name"` entries), [[faults]], seed, start."""
    data = tomllib.loads(path.read_text())
    sites = [load_preset(s["preset"]) if set(s) == {"preset"} else s for s in data.get("sites", [])]
    return Scenario.model_validate({**data, "sites": sites})
