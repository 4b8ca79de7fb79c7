"""Small tensor helpers shared by operators, priors and samplers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to v (B,) so it broadcasts against a tensor with `ndim` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def per_sample_norm(r: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm: r (B, ...) -> (B,), computed in float32 (complex entries count by modulus)."""
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1).to(_float32_like(r)), dim=1)


def per_sample_mean_square(r: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of |r|^2: r (B, ...) -> (B,) (the per-image MSE; complex entries count by modulus)."""
    return r.abs().square().reshape(r.shape[0], -1).mean(1)


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample real inner product <a, b>: (B, ...) x (B, ...) -> (B,) (real part for complex)."""
    prod = a.reshape(a.shape[0], -1) * b.reshape(b.shape[0], -1).conj()
    return prod.sum(dim=1).real


def autograd_gradient(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """d fn(x).sum() / dx by autograd, the shape of x; callable under no_grad and in inference mode (an inference
    tensor x is copied out first; fn must copy the inference tensors it closes over, e.g. y.clone())."""
    with torch.inference_mode(False), torch.enable_grad():
        x = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad


def _float32_like(r: torch.Tensor) -> torch.dtype:
    if r.is_complex():
        return torch.complex128 if r.dtype == torch.complex128 else torch.complex64
    return torch.float64 if r.dtype == torch.float64 else torch.float32


def measurement_generator(seed: int, image_index: int) -> torch.Generator:
    """The generator of image `image_index`'s measurement noise (and random operator draws) under `seed`, the same
    in the bench and in calibration runs."""
    return torch.Generator().manual_seed(seed_for(seed, image_index, 1))


def measure_images(op, x: torch.Tensor, seed: int, ids) -> torch.Tensor:
    """The measurements of images x (n, C, H, W) in [-1, 1] whose image indices are `ids` (n of them): image k with
    noise from `measurement_generator(seed, ids[k])`, so that a measurement does not depend on its neighbours."""
    return torch.cat([op.measure(x[k : k + 1], measurement_generator(seed, i)) for k, i in enumerate(ids)])


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. global seed, image index, sample index).

    Different key tuples give statistically independent streams, so the noise of sample s of image b
    does not depend on how many images or samples share a batch (edm's per-seed generators).
    """
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One torch.Generator per seed, on `device`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn_stacked(
    generators: Sequence[torch.Generator], shape: Sequence[int], device, dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise (len(generators), *shape): row i is drawn from generators[i] only."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators])


def chunk_slices(n: int, size: int | None) -> Iterator[slice]:
    """Slices covering range(n) in chunks of `size` (None or <= 0: one chunk)."""
    size = n if not size or size <= 0 else size
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def as_batch(x: torch.Tensor, ndim: int, name: str) -> tuple[torch.Tensor, bool]:
    """Return (x with a batch dim, whether one was added) for a tensor whose unbatched rank is `ndim`."""
    if x.ndim == ndim:
        return x.unsqueeze(0), True
    if x.ndim == ndim + 1:
        return x, False
    raise ValueError(f"{name} must have {ndim} dims (unbatched) or {ndim + 1} (batched), got shape {tuple(x.shape)}")


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, max_iter: int = 500, tol: float = 1e-7
) -> torch.Tensor:
    """Solve apply(x) = b for a symmetric positive semi-definite linear `apply`, per sample, from x = 0.

    b: (B, ...). Stops when every sample's residual is below tol * |b| (at least 100 machine epsilons: past
    that the residual is rounding noise, which CG would amplify along the null space of `apply`). From
    x = 0 the iterates stay in the range of `apply`, so a singular system gives the minimum-norm solution.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = batch_dot(r, r)
    tiny = torch.finfo(rr.dtype).tiny
    tol = max(tol, 100 * torch.finfo(b.dtype).eps)
    stop = tol**2 * rr.clamp(min=tiny)
    for _ in range(max_iter):
        if bool((rr <= stop).all()):
            break
        q = apply(p)
        alpha = torch.where(rr <= stop, torch.zeros_like(rr), rr / batch_dot(p, q).clamp(min=tiny))
        x = x + append_dims(alpha, x.ndim) * p
        r = r - append_dims(alpha, x.ndim) * q
        rr_new = batch_dot(r, r)
        p = r + append_dims(rr_new / rr.clamp(min=tiny), x.ndim) * p
        rr = rr_new
    return x


def sample_moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-measurement mean and std over the sample axis of (B, S, ...) samples; std is 0 for S = 1."""
    mean = samples.mean(1)
    return mean, samples.std(1) if samples.shape[1] > 1 else torch.zeros_like(mean)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA allocator; CPUs keep the process's peak, which only grows)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: the CUDA allocator's peak since `reset_peak_memory`, on CPUs the process's peak
    resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
