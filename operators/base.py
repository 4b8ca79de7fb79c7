"""The operator ladder (after DeepInverse's physics classes):

    Operator        A(x), noiseless and differentiable; `measure` adds noise from `op.noise`
    LinearOperator  + adjoint, pinv, prox, norm_squared, dense `matrix`: exact from `svd()` where the operator has
                    one, otherwise autograd (adjoint), CGLS (pinv), conjugate gradients (prox), power iteration (norm)
    SVDOperator     a LinearOperator that always is its own `SVD`: A = U diag(s) V^T with cheap V^T, V, U^T, U

`op.svd()` is the one statement of the spectral capability: the `SVD` (exact pinv, DDRM-style samplers) or
None. An operator declares the settings under which it has one in `svd_settings`, e.g. {"boundary": "circular"}.

Images are float tensors (B, C, H, W) in [-1, 1]; measurements are (B, *measurement_shape(image_shape)).
Subclasses store every constructor argument as an attribute of the same name, which is what
`to_config()` writes and `from_config()` reads back.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import ClassVar, Protocol

import torch
from torch import nn

from posterior_diffusion.tensor_utils import append_dims, autograd_gradient, conjugate_gradient

from .noise import GaussianNoise, NoiseModel

PROX_MAX_ITER = 50  # conjugate-gradient iterations of `LinearOperator.prox` without an SVD (a fixed, small budget)
PROX_TOL = 1e-5  # ... or fewer, once every sample's residual is below PROX_TOL times its right-hand side


class SVD(Protocol):
    """A = U diag(s) V^T with orthonormal V (image -> spectral coefficients) and U (spectral -> measurement).

    Spectral coefficients c = V^T x have the operator's spectral shape; they may be complex (FFT), in
    which case V(c) takes the real part and noise in the spectral domain must be drawn as V^T(n) with
    real white n. `singular_values` broadcasts against c and is 0 on unobserved coordinates; U^T y
    places the measurement on the observed coordinates (zeros elsewhere), U reads them back.
    """

    def V_t(self, x: torch.Tensor) -> torch.Tensor:
        """Spectral coefficients c = V^T x of images x (B, C, H, W)."""
        ...

    def V(self, c: torch.Tensor) -> torch.Tensor:
        """The real image (B, C, H, W) V c of spectral coefficients c."""
        ...

    def U_t(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y: measurements (B, *measurement_shape) on the spectral coordinates (0 where unobserved)."""
        ...

    def U(self, c: torch.Tensor) -> torch.Tensor:
        """U c: the measurement (B, *measurement_shape) of spectral coefficients c."""
        ...

    def singular_values(self, image_shape: tuple[int, ...]) -> torch.Tensor:
        """Real, non-negative singular values, broadcastable against V_t(x) for x of `image_shape`."""
        ...


class Operator(nn.Module):
    """A measurement operator A: (B, C, H, W) images -> (B, *measurement_shape) measurements."""

    name: ClassVar[str] = ""
    is_linear: ClassVar[bool] = False
    # the constructor settings under which `svd()` is this operator (None: never; {}: always); the class then
    # implements the `SVD` methods
    svd_settings: ClassVar[dict[str, object] | None] = None
    measurement_ndim: ClassVar[int] = 3  # rank of one measurement (3: image-like (C, h, w))
    own_noise: ClassVar[bool] = False  # True: `noisy_forward` draws the noise; get_operator refuses noise parameters
    default_prior: ClassVar[str | None] = None  # a built-in prior made for this operator's images (by name)
    # the pixel classes that `calibration_strata` tells apart (none: a calibration treats every pixel alike)
    calibration_strata_names: ClassVar[tuple[str, ...]] = ()
    # the class that a one-sided calibration gives one-sided intervals (`calibration_sides`; None: no such class)
    one_sided_class: ClassVar[str | None] = None

    def __init__(self):
        super().__init__()
        self.noise: NoiseModel = GaussianNoise(0.05)

    def svd(self) -> SVD | None:
        """The singular value decomposition of A in this operator's settings (`svd_settings`), or None."""
        settings = self.svd_settings
        if settings is None or any(getattr(self, k) != v for k, v in settings.items()):
            return None
        return self

    @property
    def has_svd(self) -> bool:
        """Whether `svd()` gives a decomposition (read-only shorthand)."""
        return self.svd() is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) without noise, differentiable in x. x: (B, C, H, W) float."""
        raise NotImplementedError

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one measurement for one image of `image_shape` (C, H, W)."""
        self.check_image_shape(image_shape)
        return tuple(image_shape)

    def image_shape(self, measurement_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape (C, H, W) of the image that gives a measurement of `measurement_shape`."""
        return tuple(measurement_shape)

    def check_image_shape(self, image_shape: tuple[int, ...]) -> None:
        """Raise ValueError if this operator cannot act on images of `image_shape` (C, H, W)."""
        if len(image_shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(image_shape)}")

    def check_batch(self, batch: int) -> None:
        """Raise ValueError if this operator cannot act on a batch of `batch` images (per-image parameters)."""

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = A(x) + noise. x: (B, C, H, W) or (C, H, W) in [-1, 1]; noise drawn from `generator`."""
        unbatched = x.ndim == 3
        x = x.unsqueeze(0) if unbatched else x
        self.check_image_shape(tuple(x.shape[1:]))
        self.check_batch(x.shape[0])
        if not torch.isfinite(x).all():
            raise ValueError("the image contains NaN or Inf")
        with torch.no_grad():
            y = self.noisy_forward(x, generator)
        return y[0] if unbatched else y

    def noisy_forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A(x) + noise for a checked batch x (B, C, H, W); operators that draw noise inside A override it."""
        return self.noise.sample(self.forward(x), generator)

    def check_measurement_values(self, y: torch.Tensor) -> None:
        """Refuse measurements on the wrong scale: image-like y must be about [-1, 1] (noise allowed); warn when
        y looks like it is on [0, 1] (not constant, no negative value, nothing above 1)."""
        peak = float(y.abs().max()) if y.numel() else 0.0
        if peak > 10:
            raise ValueError(
                f"y has values up to {peak:.4g}; image measurements must be scaled to [-1, 1] "
                "(an 8-bit image v maps to v / 127.5 - 1)"
            )
        if y.numel() and 0 <= float(y.min()) < peak <= 1:
            warnings.warn(
                "y has no negative values and none above 1: it looks like an image on [0, 1], but measurements "
                "are on the [-1, 1] scale (map v in [0, 1] to 2 v - 1)",
                stacklevel=3,
            )

    def restrict(self, y: torch.Tensor) -> torch.Tensor:
        """y with the entries the operator does not observe set to 0 (identity except for masks)."""
        return y

    def calibration_strata(self, y: torch.Tensor) -> torch.Tensor | None:
        """The class of each pixel (an index into `calibration_strata_names`, int64, shaped as the image (B, C, H,
        W)) read off the measurement y (B, *measurement) alone, or None for one class: pixels whose errors the
        measurement tells apart (observed and missing, saturated and not), whose share varies between images. A
        calibration finds a factor per class, so that its intervals hold within each (`calibration`)."""
        return None

    def calibration_sides(self, y: torch.Tensor) -> torch.Tensor | None:
        """For a one-sided calibration (`calibrate --one-sided`), the pixels of `one_sided_class` whose truth the
        measurement y (B, *measurement) bounds on one side only: +1 where the interval is [lower, 1] (the truth lies
        beyond a bright limit, so only the image range bounds it above), -1 where it is [-1, upper], 0 where it is
        two-sided (int64, shaped as the image (B, C, H, W)); None where the operator has no such pixels."""
        return None

    def residual_norm(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample DPS data-fidelity norm of the noise model between y and A(x): (B,)."""
        return self.noise.residual_norm(y, self.forward(x))

    def residual_gradient(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """d(residual_norm(y, x)^2 / 2) / dx per sample: (B, C, H, W), by autograd through A (linear operators:
        A^T of the noise model's closed form, which needs no autograd graph where A^T has a closed form)."""
        return autograd_gradient(lambda v: self.residual_norm(y.clone(), v).square() / 2, x)

    def prox(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        rho: float | torch.Tensor,
        sigma_y: float | None = None,
        max_iter: int = PROX_MAX_ITER,
        tol: float = PROX_TOL,
    ) -> torch.Tensor:
        """The proximal (data-consistency) step argmin_x ||y - A x||^2 / (2 sigma_y^2) + rho / 2 ||x - z||^2 of a
        linear operator (`LinearOperator.prox`); a nonlinear operator has none and raises ValueError."""
        from .registry import describe_capable

        raise ValueError(
            f"prox (the proximal data step) needs a linear operator; '{self.name}' is nonlinear. "
            f"Operators that have it: {describe_capable('linear')}"
        )

    @classmethod
    def task_params(cls, params: dict) -> dict:
        """The parameters of a `to_config()["params"]` that define the task rather than the image, which a
        calibration must share with a run: all but the image size and the seed of per-image draws."""
        return {k: v for k, v in params.items() if k not in ("image_size", "seed")}

    def to_config(self) -> dict:
        """A JSON-ready dict; `operators.from_config` rebuilds the same operator (kernels and masks included)."""
        params = {}
        for arg in inspect.signature(type(self).__init__).parameters:
            if arg in ("self", "args", "kwargs"):
                continue
            value = getattr(self, arg)
            params[arg] = value.tolist() if isinstance(value, torch.Tensor) else value
        return {"name": self.name, "params": params, **self.noise.to_config()}

    def extra_repr(self) -> str:
        cfg = self.to_config()
        shown = {k: v for k, v in cfg["params"].items() if not isinstance(v, list) or len(v) <= 4}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) + f", noise={self.noise.to_config()}"


class LinearOperator(Operator):
    """A linear A. Adjoint, pinv and norm from `svd()` where it gives one, else autograd, CGLS and power iteration;
    a subclass overrides one only for a faster closed form."""

    is_linear: ClassVar[bool] = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y: (B, *measurement_shape) -> (B, C, H, W): V diag(s) U^T y with an SVD, else the VJP of `forward`
        (exact for any linear A). Differentiable in y when y requires grad (PSLD's gluing term differentiates
        A^T A D(z0_hat))."""
        image_shape = self.image_shape(tuple(y.shape[1:]))
        svd = self.svd()
        if svd is not None:
            return svd.V(svd.singular_values(image_shape).to(y.real.dtype) * svd.U_t(y))
        shape = (y.shape[0], *image_shape)
        differentiable = torch.is_grad_enabled() and y.requires_grad
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros(shape, device=y.device, dtype=y.real.dtype, requires_grad=True)
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y.clone(), create_graph=differentiable)
        return grad

    def residual_gradient(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.noise.residual_gradient(y, self.forward(x)))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x."""
        return self.adjoint(self.forward(x))

    def norm_squared(self, image_shape: tuple[int, ...], iters: int = 50) -> float:
        """||A||_2^2, the largest eigenvalue of A^T A on images of `image_shape`: max(s)^2 with an SVD (exact), else
        `iters` steps of power iteration (float64), which approaches it from below."""
        svd = self.svd()
        if svd is not None:
            return float(svd.singular_values(tuple(image_shape)).max()) ** 2
        buffer = next(iter(self.buffers()), None)
        device = buffer.device if buffer is not None else "cpu"
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn((1, *image_shape), generator=g, device=device, dtype=torch.float64)
        with torch.no_grad():
            for _ in range(iters):
                x = x / x.norm()
                ax = self.normal(x)
                value = (ax * x).sum()  # the Rayleigh quotient; read on the host once, after the loop
                x = ax
        return float(value)

    def pinv(self, y: torch.Tensor, rcond: float = 1e-6, max_iter: int = 500, tol: float = 1e-7) -> torch.Tensor:
        """A^+ y: (B, *measurement_shape) -> (B, C, H, W).

        With an SVD, exactly V diag(1/s) U^T y, discarding singular values below rcond * max(s) (max_iter and
        tol unused). Otherwise conjugate gradients on the damped normal equations (A^T A + d I) x = A^T y from
        x = 0 (CGLS), d = (rcond ||A||)^2: rcond -> 0 gives the minimum-norm least-squares solution (iterates stay
        in range(A^T)); a larger rcond regularises like discarding singular values below rcond * ||A||.
        Per-sample step sizes, so each measurement's result is independent of the batch.
        """
        svd = self.svd()
        if svd is not None:
            s = svd.singular_values(self.image_shape(tuple(y.shape[1:]))).to(y.real.dtype)
            s_inv = torch.where(s > rcond * s.max(), 1.0 / s.clamp(min=1e-30), torch.zeros_like(s))
            return svd.V(s_inv * svd.U_t(y))
        b = self.adjoint(y)
        damping = rcond**2 * self.norm_squared(tuple(b.shape[1:])) if rcond > 1e-4 else 0.0
        return conjugate_gradient(lambda v: self.normal(v) + damping * v, b, max_iter=max_iter, tol=tol)

    def prox(self, z, y, rho, sigma_y=None, max_iter=PROX_MAX_ITER, tol=PROX_TOL):
        """x = argmin_x ||y - A x||^2 / (2 sigma_y^2) + rho / 2 ||x - z||^2, per sample (DiffPIR's data step, the
        DAPS / ADMM x-update), i.e. the solution of (A^T A + lam I) x = A^T y + lam z with lam = rho sigma_y^2.

        z: (B, C, H, W) images; y: (B, *measurement_shape); rho: a float or a (B,) tensor (one weight per image),
        >= 0, inf allowed (x = z); sigma_y: the noise std, default the operator's Gaussian `noise_sigma` (another
        noise model needs it given). Returns (B, C, H, W) in z's dtype (computed in float32 at least).

        With an SVD (`svd()`), exact: per spectral coordinate x_i = (s_i (U^T y)_i + lam z_i) / (s_i^2 + lam),
        z_i where s_i = 0 (the circular blurs' SVD is the FFT, so this is the FFT closed form). Otherwise conjugate
        gradients on (A^T A + lam I) (x - z) = A^T (y - A z) from x = z, at most `max_iter` iterations (default
        PROX_MAX_ITER = 50), stopping once every sample's residual is below `tol` (PROX_TOL = 1e-5) times its
        right-hand side: well-conditioned when lam is not small against ||A||^2, approximate otherwise (pass a
        larger max_iter for more accuracy).

        lam = 0 (sigma_y = 0: noiseless measurements, or rho = 0) is the limit lam -> 0: x = z + A^+ (y - A z)
        = A^+ y + (I - A^+ A) z, the least-squares solution nearest z (DDNM's range / null-space split). With
        an SVD, singular values at or below 1e-6 of the largest count as 0 there (only there), as in `pinv`.
        rho is checked for >= 0 where that costs no host-device sync (floats and CPU tensors).
        """
        sigma_y = self._prox_sigma(sigma_y)
        work = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
        z_work, y_work = z.to(work), y.to(work)
        rho = torch.as_tensor(rho, dtype=work, device=z.device)
        if rho.ndim > 1 or (rho.ndim == 1 and rho.shape[0] not in (1, z.shape[0])):
            raise ValueError(f"rho must be a float or a ({z.shape[0]},) tensor, one per image; got {tuple(rho.shape)}")
        if rho.device.type == "cpu" and not bool((rho >= 0).all()):
            raise ValueError(f"rho must be >= 0 (inf allowed), got {rho.tolist()}")
        rho = rho.expand(z.shape[0])
        infinite = torch.isinf(rho)  # those samples return z (also with sigma_y = 0)
        lam = torch.where(infinite, torch.ones_like(rho), rho) * sigma_y**2
        svd = self.svd()
        if svd is not None:
            x = self._prox_spectral(svd, z_work, y_work, lam)
        else:
            b = self.adjoint(y_work - self.forward(z_work))
            lam_b = append_dims(lam, b.ndim)
            x = z_work + conjugate_gradient(lambda v: self.normal(v) + lam_b * v, b, max_iter=max_iter, tol=tol)
        return torch.where(append_dims(infinite, x.ndim), z_work, x).to(z.dtype)

    def _prox_sigma(self, sigma_y: float | None) -> float:
        if sigma_y is None:
            if not isinstance(self.noise, GaussianNoise):
                raise ValueError(
                    f"prox needs the Gaussian noise std sigma_y; this operator's noise is {self.noise.to_config()}: "
                    "pass sigma_y explicitly"
                )
            sigma_y = self.noise.sigma
        if not (sigma_y >= 0 and math.isfinite(sigma_y)):
            raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
        return float(sigma_y)

    def _prox_spectral(self, svd: SVD, z: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """The exact prox in the spectral domain (see `prox`): lam (B,) >= 0, finite."""
        s = svd.singular_values(tuple(z.shape[1:])).to(z.device, z.dtype)
        c_z, u_t_y = svd.V_t(z), svd.U_t(y)
        lam_c = append_dims(lam, c_z.ndim)
        s = torch.where((s <= 1e-6 * s.max()) & (lam_c == 0), torch.zeros_like(s), s)  # pinv's cut, at lam = 0 only
        denominator = s.square() + lam_c
        solved = (s * u_t_y + lam_c * c_z) / denominator.clamp(min=torch.finfo(z.dtype).tiny)
        return svd.V(torch.where(denominator > 0, solved, c_z))

    def matrix(self, image_shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
        """The dense matrix (m, d) of A on flattened images of `image_shape` (small images only)."""
        d = math.prod(image_shape)
        buffer = next(iter(self.buffers()), None)
        device = buffer.device if buffer is not None else "cpu"
        eye = torch.eye(d, dtype=dtype, device=device).reshape(d, *image_shape)
        with torch.no_grad():
            columns = torch.cat([self.forward(eye[i : i + 256]) for i in range(0, d, 256)])
        return columns.reshape(d, -1).T.contiguous()


class SVDOperator(LinearOperator):
    """A linear operator given by its SVD in every setting (see `SVD`): subclasses implement V_t, V, U_t, U and
    singular_values; A x = U diag(s) V^T x unless `forward` is overridden with a direct form."""

    svd_settings: ClassVar[dict[str, object] | None] = {}

    def V_t(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def V(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def U_t(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def U(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def singular_values(self, image_shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        return self.U(self.singular_values(tuple(x.shape[1:])).to(x.real.dtype) * self.V_t(x))


class DiagonalOperator(SVDOperator):
    """A = diag(s) in pixel space (identity, masks): U = V = I, so the spectral coefficients are the pixels."""

    def V_t(self, x):
        return x

    def V(self, c):
        return c

    def U_t(self, y):
        return y

    def U(self, c):
        return c
