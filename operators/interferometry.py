"""The `interferometry` operator: an EHT-like array observing a black-hole image (shared reference interferometry.md).

Images x (B, 1, N, N) in [-1, 1] are sky brightness x_jy = (x + 1) / 2 * peak_jy Jy per pixel (InverseBench's
[0, 1] images in units of the peak pixel). The visibilities are V = A x_jy (`visibilities.dft_matrix` on the uv
coverage of `radio_array.uv_coverage`). A measurement is one of two data layouts (`data`):

- "vis": complex visibilities as (Re V, Im V), shape (2M,), thermal noise sigma per part (a linear model);
- "closures" (default, InverseBench's task): (amplitudes (M), closure phases (Nt), log closure amplitudes (Nq),
  total flux (1)), all computed from the noisy, optionally gain-corrupted visibilities. Closure errors are
  propagated from the thermal sigmas and the measured amplitudes; the flux is the median amplitude of the
  shortest baseline (InverseBench's estimate_flux), with sigma 2 peak_jy.

The likelihood (`InterferometricLikelihood`) weighs the terms as InverseBench's preset: amplitudes 0, closure
phases 1, log closure amplitudes 1, flux 0.5; closure phase residuals are wrap-safe (2 sin(dpsi / 2)).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Operator
from .closures import (
    closure_phases,
    log_closure_amplitudes,
    minimal_closure_sets,
    station_corruption,
)
from .noise import NoiseModel
from .radio_array import Schedule, load_array, load_source, uv_coverage
from .registry import from_config, register_operator
from .visibilities import dft_matrix

DATA_LAYOUTS = ("closures", "vis")
TERMS = ("amp", "cphase", "logcamp", "flux")


class InterferometricLikelihood(NoiseModel):
    """Weighted chi-square of the data products of an `Interferometry` operator; the thermal noise itself is
    drawn by the operator's `measure` (on the visibilities, before the products are formed)."""

    name = "interferometric"

    def __init__(self, op: Interferometry):
        self.op = op

    def sample(self, y_clean, generator=None):
        raise NotImplementedError("interferometric noise is added to the visibilities by Interferometry.measure")

    def weighted_residuals(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """sqrt(w) * residual / sigma per data element: (B, D)."""
        op = self.op
        if op.data == "vis":
            sigma = op.sigma.repeat(2).to(y.dtype)
            return (y - y_hat) / sigma
        m, nt, nq = op.sizes
        amp, cp, lca, flux = torch.split(y, [m, nt, nq, 1], dim=-1)
        amp_hat, cp_hat, lca_hat, flux_hat = torch.split(y_hat, [m, nt, nq, 1], dim=-1)
        sigma = op.sigma.to(y.dtype)
        inv_snr2 = (sigma / amp.clamp(min=1e-12)) ** 2
        sigma_cp = inv_snr2[..., op.closures.triangles].sum(-1).sqrt()
        sigma_lca = inv_snr2[..., op.closures.quadrangles].sum(-1).sqrt()
        w = op.weights
        parts = [
            w["amp"] ** 0.5 * (amp - amp_hat) / sigma,
            w["cphase"] ** 0.5 * 2 * torch.sin((cp - cp_hat) / 2) / sigma_cp,
            w["logcamp"] ** 0.5 * (lca - lca_hat) / sigma_lca,
            w["flux"] ** 0.5 * (flux - flux_hat) / (2 * op.peak_jy),
        ]
        return torch.cat(parts, dim=-1)

    def residual_norm(self, y, y_hat):
        return self.weighted_residuals(y, y_hat).square().sum(-1).sqrt()

    def neg_log_likelihood(self, y, y_hat):
        return 0.5 * self.weighted_residuals(y, y_hat).square().sum(-1)

    def chi_squares(self, y: torch.Tensor, y_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reduced chi-squares per term (B,) as ehtim defines them (1 is a fit at the noise level)."""
        op = self.op
        saved, op.weights = op.weights, dict.fromkeys(TERMS, 1.0)
        try:
            r = self.weighted_residuals(y, y_hat).square()
        finally:
            op.weights = saved
        if op.data == "vis":
            return {"vis": r.sum(-1) / r.shape[-1]}
        m, nt, nq = op.sizes
        amp, cp, lca, _ = torch.split(r, [m, nt, nq, 1], dim=-1)
        return {"amp": amp.mean(-1), "cphase": cp.mean(-1), "logcamp": lca.mean(-1)}

    def to_config(self) -> dict:
        return {}


@register_operator("interferometry")
class Interferometry(Operator):
    """EHT-style VLBI of (B, 1, N, N) images in [-1, 1]; see the module docstring for units and data layouts.

    array, source, stations: the shipped EHT 2017 table and source presets (`radio_array`); the schedule:
    GMST start/stop hours, cadence and integration seconds (10 s every 600 s over a day, ehtim examples);
    image_size, fov_uas: 64 px over 160 microarcseconds (score_prior demo); pulse: "triangle" (ehtim) or
    "delta"; gain_std: station gain and phase corruption when measuring (0: thermal noise only, ehtim
    ampcal/phasecal=True); weights: likelihood weights of amp, cphase, logcamp, flux (InverseBench preset).
    """

    own_noise: ClassVar[bool] = True
    measurement_ndim: ClassVar[int] = 1  # one measurement is a vector of data products
    default_prior: ClassVar[str] = "black-hole"  # the built-in prior of procedural black-hole images

    def __init__(
        self,
        array: str = "EHT2017",
        source: str = "SgrA",
        stations: list[str] | None = None,
        image_size: int = 64,
        fov_uas: float = 160.0,
        start_gmst: float = 0.0,
        stop_gmst: float = 24.0,
        cadence_s: float = 600.0,
        integration_s: float = 10.0,
        pulse: str = "triangle",
        peak_jy: float = 0.01,
        data: str = "closures",
        gain_std: float = 0.0,
        weights: dict | None = None,
    ):
        super().__init__()
        if data not in DATA_LAYOUTS:
            raise ValueError(f"data must be one of {DATA_LAYOUTS}, got {data!r}")
        weights = {"amp": 0.0, "cphase": 1.0, "logcamp": 1.0, "flux": 0.5} | dict(weights or {})
        if set(weights) != set(TERMS) or min(weights.values()) < 0:
            raise ValueError(f"weights must be non-negative values for {TERMS}, got {weights}")
        self.array, self.source, self.stations = array, source, list(stations) if stations else None
        self.image_size, self.fov_uas, self.pulse, self.peak_jy = int(image_size), float(fov_uas), pulse, peak_jy
        self.start_gmst, self.stop_gmst = start_gmst, stop_gmst
        self.cadence_s, self.integration_s = cadence_s, integration_s
        self.data, self.gain_std, self.weights = data, float(gain_std), weights
        schedule = Schedule(start_gmst, stop_gmst, cadence_s, integration_s)
        stations_used = load_array(array, tuple(stations) if stations else None)
        self.coverage = uv_coverage(stations_used, load_source(source), schedule)
        self.closures = minimal_closure_sets(self.coverage)
        self.register_buffer("matrix_t", dft_matrix(self.coverage.u, self.coverage.v, image_size, fov_uas, pulse).T)
        self.register_buffer("sigma", self.coverage.sigma.float())
        self.register_buffer("shortest", self._shortest_baseline())
        self.noise = InterferometricLikelihood(self)

    @property
    def shift_invariant(self) -> bool:
        """Closure data do not change when the image is translated (posterior samples differ by shifts)."""
        return self.data == "closures"

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(M visibilities, Nt closure phases, Nq log closure amplitudes)."""
        return len(self.coverage), len(self.closures.triangles), len(self.closures.quadrangles)

    def _shortest_baseline(self) -> torch.Tensor:
        lengths = torch.hypot(self.coverage.u, self.coverage.v)
        pairs = self.coverage.stations
        a, b = pairs[lengths.argmin()].tolist()
        return torch.nonzero((pairs[:, 0] == a) & (pairs[:, 1] == b)).flatten()

    def check_image_shape(self, image_shape):
        super().check_image_shape(image_shape)
        if tuple(image_shape) != (1, self.image_size, self.image_size):
            raise ValueError(f"interferometry images are (1, {self.image_size}, {self.image_size}), got {image_shape}")

    def measurement_shape(self, image_shape):
        self.check_image_shape(image_shape)
        m, nt, nq = self.sizes
        return (2 * m,) if self.data == "vis" else (m + nt + nq + 1,)

    def image_shape(self, measurement_shape):
        return (1, self.image_size, self.image_size)

    def check_measurement_values(self, y):
        """Data products are not images: any finite values are allowed."""

    def brightness(self, x: torch.Tensor) -> torch.Tensor:
        """Jy per pixel of images in [-1, 1]: (B, 1, N, N) -> (B, N * N)."""
        return ((x.flatten(1).float() + 1) / 2) * self.peak_jy

    def visibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free complex visibilities (B, M) in Jy."""
        return self.brightness(x).to(self.matrix_t.dtype) @ self.matrix_t

    def products(self, vis: torch.Tensor) -> torch.Tensor:
        """The measurement layout of `data` from visibilities (B, M)."""
        if self.data == "vis":
            return torch.cat([vis.real, vis.imag], dim=-1)
        flux = self.flux_estimate(vis)[:, None]
        return torch.cat(
            [vis.abs(), closure_phases(vis, self.closures), log_closure_amplitudes(vis, self.closures), flux], dim=-1
        ).float()

    def flux_estimate(self, vis: torch.Tensor) -> torch.Tensor:
        """Total flux (B,) in Jy from visibilities (B, M): the median amplitude of the shortest baseline."""
        return vis[:, self.shortest].abs().median(-1).values

    def measured_flux(self, y: torch.Tensor) -> torch.Tensor:
        """Total flux (B,) in Jy of measurements y (B, D) of either layout (the same estimate for both)."""
        return y[:, -1] if self.data == "closures" else self.flux_estimate(self.complex_visibilities(y))

    def complex_visibilities(self, y_vis: torch.Tensor) -> torch.Tensor:
        """The complex visibilities (B, M) of "vis" measurements (B, 2M) = (Re V, Im V)."""
        if self.data != "vis":
            raise ValueError("closure data hold no visibility phases: this needs data='vis' measurements")
        m = len(self.coverage)
        return torch.complex(y_vis[:, :m], y_vis[:, m:]).to(self.matrix_t.dtype)

    def with_data(self, data: str, gain_std: float | None = None) -> Interferometry:
        """The same observation with data layout `data` (and `gain_std` if given), on this operator's device."""
        config = self.to_config()
        config["params"] |= {"data": data} | ({} if gain_std is None else {"gain_std": gain_std})
        return from_config(config).to(self.matrix_t.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.products(self.visibilities(x))
        if self.data == "vis":
            return out
        return torch.cat([out[:, :-1], self.brightness(x).sum(-1, keepdim=True)], dim=-1)  # the model's own flux

    def noisy_forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Thermal noise (and station corruption when gain_std > 0) on the visibilities, then the data products."""
        vis = self.visibilities(x)
        if self.gain_std > 0:
            vis = vis * torch.stack(
                [station_corruption(self.coverage, self.gain_std, generator) for _ in range(x.shape[0])]
            ).to(vis)
        shape = (2, *vis.shape)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(vis.device) * self.sigma
        return self.products(vis + torch.complex(noise[0], noise[1]))

    def dirty_image(self, y_vis: torch.Tensor) -> torch.Tensor:
        """A^H V / M for "vis" measurements (B, 2M): the dirty image (B, 1, N, N) in Jy per pixel."""
        image = (self.complex_visibilities(y_vis) @ self.matrix_t.conj().T).real / len(self.coverage)
        return image.reshape(-1, 1, self.image_size, self.image_size)
