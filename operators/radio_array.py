"""Telescope arrays, sources and observing schedules -> uv coverage and thermal noise (EHT-style VLBI).

Conventions follow ehtim (see shared reference, interferometry.md Sec. 1.3-1.4):
- baselines (a, b) with a < b in the array-file order; the baseline vector is (r_a - r_b) / lambda;
- at Greenwich hour angle H = (GMST - RA) * 15 deg, u = sin H B_x + cos H B_y and
  v = -sin(dec) cos H B_x + sin(dec) sin H B_y + cos(dec) B_z (wavelengths);
- a sample is kept when both stations see the source between `elevation_min` and `elevation_max` (geocentric);
- Stokes-I thermal noise per real and imaginary part: sqrt(SEFD_a SEFD_b / (2 bandwidth t_int)) / 0.88 / sqrt(2)
  (0.88: 2-bit quantisation efficiency; 1/sqrt(2): the average of the RR and LL correlations).
All geometry is float64.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import torch

SPEED_OF_LIGHT = 299_792_458.0  # m/s
QUANTIZATION_EFFICIENCY = 0.88  # 2-bit sampling (ehtim)
_DATA = files("posterior_diffusion.assets") / "interferometry"


@dataclass(frozen=True)
class Station:
    name: str
    position_m: tuple[float, float, float]  # ECEF
    sefd_jy: float


@dataclass(frozen=True)
class Source:
    name: str
    ra_hours: float
    dec_deg: float
    frequency_hz: float = 230e9
    bandwidth_hz: float = 4e9

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT / self.frequency_hz


@dataclass(frozen=True)
class Schedule:
    """Scans every `cadence_s` seconds of GMST from `start_gmst` to `stop_gmst` hours, each one integration of
    `integration_s` seconds (ehtim examples: 10 s every 600 s over a full day); elevation limits in degrees."""

    start_gmst: float = 0.0
    stop_gmst: float = 24.0
    cadence_s: float = 600.0
    integration_s: float = 10.0
    elevation_min: float = 10.0
    elevation_max: float = 85.0

    def times(self) -> np.ndarray:
        step = self.cadence_s / 3600.0
        return np.arange(self.start_gmst, self.stop_gmst, step, dtype=np.float64)


@dataclass(frozen=True)
class UVCoverage:
    """M samples: u, v (wavelengths), time (GMST hours), stations (M, 2) indices into `station_names` (a < b),
    sigma (Jy, Stokes-I thermal noise per real and imaginary part)."""

    u: torch.Tensor
    v: torch.Tensor
    time: torch.Tensor
    stations: torch.Tensor
    sigma: torch.Tensor
    station_names: tuple[str, ...]

    def __len__(self) -> int:
        return self.u.shape[0]


def load_array(name: str = "EHT2017", stations: tuple[str, ...] | None = None, sefd: str = "sefd") -> list[Station]:
    """Stations of a shipped array table (assets/interferometry/<name>.csv); `stations` picks a subset by name
    (default: the 8 EHT 2017 stations, without the optional PDB); sefd: "sefd" or "sefd_m87" (M87 campaign)."""
    path = _DATA / f"{name.lower()}.csv"
    if not path.is_file():
        raise ValueError(f"unknown array {name!r}; shipped: EHT2017")
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    if sefd not in rows[0]:
        raise ValueError(f"sefd must be one of {[k for k in rows[0] if k.startswith('sefd')]}, got {sefd!r}")
    wanted = stations or tuple(r["name"] for r in rows if r["name"] != "PDB")
    by_name = {r["name"]: r for r in rows}
    missing = [s for s in wanted if s not in by_name or not by_name[s][sefd]]
    if missing:
        raise ValueError(f"stations {missing} are not in {name} (with {sefd}); valid: {', '.join(by_name)}")
    return [
        Station(r["name"], (float(r["x_m"]), float(r["y_m"]), float(r["z_m"])), float(r[sefd]))
        for r in rows
        if r["name"] in wanted
    ]


def load_source(name: str) -> Source:
    """A shipped source preset (assets/interferometry/sources.json): "SgrA" or "M87"."""
    presets = {k: v for k, v in json.loads((_DATA / "sources.json").read_text()).items() if not k.startswith("_")}
    if name not in presets:
        raise ValueError(f"unknown source {name!r}; valid: {', '.join(presets)}")
    return Source(name, **presets[name])


def _rotated(positions: np.ndarray, hour_angle: np.ndarray) -> np.ndarray:
    """Station positions (S, 3) rotated about the Earth's axis by each hour angle (T,) -> (T, S, 3)."""
    c, s = np.cos(hour_angle)[:, None], np.sin(hour_angle)[:, None]
    x, y = positions[:, 0], positions[:, 1]
    z = np.broadcast_to(positions[:, 2], (len(hour_angle), len(positions)))
    return np.stack([c * x - s * y, s * x + c * y, z], axis=-1)


def elevations(positions: np.ndarray, source: Source, gmst_hours: np.ndarray) -> np.ndarray:
    """Geocentric elevation (degrees) of the source at each station and time: (T, S)."""
    dec = np.deg2rad(source.dec_deg)
    hour_angle = np.deg2rad((gmst_hours - source.ra_hours) * 15.0)
    r = _rotated(positions, hour_angle)
    direction = np.array([np.cos(dec), 0.0, np.sin(dec)])
    cos_angle = (r @ direction) / np.linalg.norm(r, axis=-1)
    return 90.0 - np.rad2deg(np.arccos(np.clip(cos_angle, -1, 1)))


def thermal_sigma(sefd_a, sefd_b, bandwidth_hz: float, integration_s: float):
    """Stokes-I thermal noise (Jy) per real and imaginary part of one visibility."""
    return np.sqrt(sefd_a * sefd_b / (2 * bandwidth_hz * integration_s)) / QUANTIZATION_EFFICIENCY / np.sqrt(2)


def uv_coverage(stations: list[Station], source: Source, schedule: Schedule = Schedule()) -> UVCoverage:
    """The visibilities an array measures on a source over a schedule (earth-rotation synthesis)."""
    positions = np.array([s.position_m for s in stations], dtype=np.float64)
    sefd = np.array([s.sefd_jy for s in stations], dtype=np.float64)
    times = schedule.times()
    elev = elevations(positions, source, times)
    visible = (elev > schedule.elevation_min) & (elev < schedule.elevation_max)
    a, b = np.triu_indices(len(stations), k=1)
    t_idx, pair = np.nonzero(visible[:, a] & visible[:, b])
    a, b = a[pair], b[pair]
    baseline = (positions[a] - positions[b]) / source.wavelength_m
    hour_angle = np.deg2rad((times[t_idx] - source.ra_hours) * 15.0)
    dec = np.deg2rad(source.dec_deg)
    sin_h, cos_h = np.sin(hour_angle), np.cos(hour_angle)
    u = sin_h * baseline[:, 0] + cos_h * baseline[:, 1]
    v = -np.sin(dec) * cos_h * baseline[:, 0] + np.sin(dec) * sin_h * baseline[:, 1] + np.cos(dec) * baseline[:, 2]
    sigma = thermal_sigma(sefd[a], sefd[b], source.bandwidth_hz, schedule.integration_s)
    return UVCoverage(
        u=torch.from_numpy(u),
        v=torch.from_numpy(v),
        time=torch.from_numpy(times[t_idx]),
        stations=torch.from_numpy(np.stack([a, b], axis=1)),
        sigma=torch.from_numpy(sigma),
        station_names=tuple(s.name for s in stations),
    )
