"""A posterior mean from the chains themselves: each chain's last denoiser estimates x0_hat, averaged.

E[x | y] = E[ E[x | x_t, y] | y ]: where the average of S final draws carries a 1/S share of the posterior
variance, the average of the chains' estimates of x given their states carries less (a Rao-Blackwellisation). The
network gives the prior's E[x | x_t], not E[x | x_t, y]; the two come close only where x_t is barely noisy, so
only the last `TAIL_STEPS` steps count, and of those only the ones at noise level sqrt((1 - a_t) / a_t) <=
`TAIL_LEVEL` on the [-1, 1] scale of x (with DiffPIR-20, t = 26 and 0: levels 0.099 and 0.01; with DiffPIR-100,
t = 5 and 0; with fewer steps the second-to-last is noisier and only the final one counts: the samples' average).
A sampler opts in with `Sampler.reports_tail_mean = True` where its step hook's x0_hat is the denoiser's estimate
in pixel space and the tail mean measured better than its draws; `sample_posterior` then reports it as `mean`
("mean_estimate": "tail_average", `posterior_diffusion.posterior_mean`).
"""

from __future__ import annotations

from collections import deque

import torch

# Chosen on tune crops (two sets of 8 seeded 64x64 crops of trainsets/CBSD432_subset, 4 samples; PSNR of the mean
# against the samples' average): with DiffPIR-20 the last two steps gained +0.02 to +0.86 dB on sr4, box inpainting
# and both deblurrings and moved random inpainting by -0.02 / +0.07 dB; averaging three or more cost random
# inpainting 0.26-0.28 dB. With DiffPIR-100 the last two gained +0.02 dB on random inpainting, Gaussian deblurring
# and hdr (averaging back to noise level 0.1, six steps, cost random inpainting 0.13-0.16 dB).
TAIL_STEPS = 2
TAIL_LEVEL = 0.1  # the noisiest late step measured (DiffPIR-20's t = 26)


class TailMean:
    """Keeps, for one chunk of n chains, the x0_hat (n, C, H, W) of its last `steps` steps at noise level <= `level`
    (copies on the device; `levels`: each timestep's level, `priors.base.noise_levels(...).tolist()`, so the step's
    Python-int t is looked up with no host-device sync) and averages them."""

    def __init__(self, levels: list[float], steps: int = TAIL_STEPS, level: float = TAIL_LEVEL):
        self.counted = [v <= level for v in levels]
        self.last: deque[torch.Tensor] = deque(maxlen=steps)

    def add(self, info: dict) -> None:
        """One step's {"t", "x0_hat", ...}."""
        if self.counted[int(info["t"])]:
            self.last.append(info["x0_hat"].detach().to(torch.float32, copy=True))

    def mean(self) -> torch.Tensor | None:
        """Each chain's average (n, C, H, W), or None before any step."""
        return torch.stack(tuple(self.last)).mean(0) if self.last else None
