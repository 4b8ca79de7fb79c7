"""Closure phases and log closure amplitudes: the interferometric data that station gain and phase errors cannot
corrupt (shared reference interferometry.md Sec. 1.5).

Minimal (non-redundant) sets per time stamp, as ehtim's count="min": with the n stations observing at that time,
in array order and the first as reference, the triangles (ref, s_i, s_j), i < j, give (n-1)(n-2)/2 closure phases
and the quadrangles (ref, s_i, s_j, s_k) with i = 3..n-1, j = 1..i-1, k = j+1 (k = 1 when j = i-1) give
n(n-3)/2 log closure amplitudes.

closure phase psi_abc = arg V_ab + arg V_bc + arg V_ca (a leg stored the other way round enters conjugated);
log closure amplitude L_abcd = log|V_ab| + log|V_cd| - log|V_ad| - log|V_bc|. Errors propagate from the thermal
sigmas: sigma_psi^2 = sum sigma_k^2 / |V_k|^2 (radians), sigma_L^2 = sum 1 / SNR_k^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .radio_array import UVCoverage


@dataclass(frozen=True)
class ClosureSets:
    """triangles (Nt, 3): visibility indices of the legs ab, bc, ca; triangle_signs (Nt, 3): +1 where the stored
    baseline has the leg's orientation, -1 where it is reversed (conjugated); quadrangles (Nq, 4): visibility
    indices of ab, cd (numerator) and ad, bc (denominator)."""

    triangles: torch.Tensor
    triangle_signs: torch.Tensor
    quadrangles: torch.Tensor


def minimal_closure_sets(coverage: UVCoverage) -> ClosureSets:
    """The non-redundant closure triangles and quadrangles of every time stamp of `coverage`."""
    index = {}
    for k, (t, (a, b)) in enumerate(zip(coverage.time.tolist(), coverage.stations.tolist(), strict=True)):
        index[(t, a, b)] = k
    triangles, signs, quadrangles = [], [], []

    def leg(t, a, b):
        return (index[(t, a, b)], 1) if a < b else (index[(t, b, a)], -1)

    for t in sorted(set(coverage.time.tolist())):
        present = sorted({s for (tt, a, b) in index if tt == t for s in (a, b)})
        n = len(present)
        ref, others = present[0], present[1:]
        for i in range(len(others)):
            for j in range(i + 1, len(others)):
                a, b, c = ref, others[i], others[j]
                legs = [leg(t, a, b), leg(t, b, c), leg(t, c, a)]
                triangles.append([k for k, _ in legs])
                signs.append([s for _, s in legs])
        for i in range(3, n):
            for j in range(1, i):
                k = 1 if j == i - 1 else j + 1
                a, b, c, d = ref, present[i], present[j], present[k]
                quadrangles.append([leg(t, a, b)[0], leg(t, c, d)[0], leg(t, a, d)[0], leg(t, b, c)[0]])
    return ClosureSets(
        triangles=torch.tensor(triangles, dtype=torch.long).reshape(-1, 3),
        triangle_signs=torch.tensor(signs, dtype=torch.float64).reshape(-1, 3),
        quadrangles=torch.tensor(quadrangles, dtype=torch.long).reshape(-1, 4),
    )


def closure_phases(vis: torch.Tensor, sets: ClosureSets) -> torch.Tensor:
    """(..., M) complex visibilities -> (..., Nt) closure phases in radians, wrapped to (-pi, pi]."""
    phases = torch.angle(vis)[..., sets.triangles]  # (..., Nt, 3)
    total = (phases * sets.triangle_signs.to(phases.dtype)).sum(-1)
    return torch.atan2(torch.sin(total), torch.cos(total))


def log_closure_amplitudes(vis: torch.Tensor, sets: ClosureSets, eps: float = 1e-12) -> torch.Tensor:
    """(..., M) complex visibilities -> (..., Nq) log closure amplitudes (|V| clamped at eps before the log)."""
    log_amp = torch.log(vis.abs().clamp(min=eps))[..., sets.quadrangles]  # (..., Nq, 4)
    return log_amp[..., 0] + log_amp[..., 1] - log_amp[..., 2] - log_amp[..., 3]


def station_corruption(
    coverage: UVCoverage, gain_std: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-visibility complex factors (M,) of random station gains and phases (ehtim-style): amplitude
    sqrt(g_a g_b) with g = |(1 + gain_std n1)(1 + gain_std n2)| (a constant offset per station times a term per
    time), and exp(i (phi_a - phi_b)) with phases uniform per station and time. Closure quantities are unchanged."""
    n_st = len(coverage.station_names)
    times, t_index = torch.unique(coverage.time, return_inverse=True)
    offset = (1 + gain_std * torch.randn(n_st, generator=generator, dtype=torch.float64)).abs()
    per_time = (1 + gain_std * torch.randn(len(times), n_st, generator=generator, dtype=torch.float64)).abs()
    phase = 2 * torch.pi * torch.rand(len(times), n_st, generator=generator, dtype=torch.float64)
    a, b = coverage.stations[:, 0], coverage.stations[:, 1]
    gain = offset[None] * per_time
    amplitude = (gain[t_index, a] * gain[t_index, b]).sqrt()
    return torch.polar(amplitude, phase[t_index, a] - phase[t_index, b])
