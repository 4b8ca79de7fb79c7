"""sampler="auto": the sampler measured best for an operator at its default budget.

`AUTO[operator name]` lists (sampler, preset) in order of preference; the first whose capabilities accept the
prior and the operator runs (e.g. DDRM needs an SVD, so a reflect-padded blur falls through to RED-Diff; ReSample
is first only among the latent samplers). An operator missing from the table tries `FALLBACK`.

Where each order comes from (README, Benchmarks; 8 Kodak24 crops of 64x64, the built-in RGB prior, 100 steps;
PSNR of the mean, seconds per image on the 2-core CPU):
    super_resolution   sr4: RED-Diff 24.7 dB (8.2 s), PnP-ULA 23.6 (17.0 s), DPS 18.9 (14.1 s); DDRM has no SVD for
                       bicubic SR (RED-Diff takes latent priors too; it was not compared with ReSample there)
    inpaint_box        DDRM 27.5 dB (4.9 s), RED-Diff 27.0 (5.1 s), DPS 23.2 (9.7 s)
    inpaint_random     DDRM 26.1 dB (5.0 s), RED-Diff 24.7 (5.0 s), DPS 21.9 (10.1 s)
    gaussian_blur      reflect padding (no SVD): RED-Diff 30.2 dB (8.9 s), PnP-ULA 28.6 (11.1 s), DPS 22.6 (7.3 s);
                       circular (an SVD): DDRM, 30.10 dB in 20 NFE on the README's first command (not compared
                       with RED-Diff there)
    motion_blur        RED-Diff 27.4 dB (8.8 s), PnP-ULA 25.8 (7.1 s), DPS 22.5 (6.5 s)
    denoise            DDRM 29.7 dB (3.6 s), PnP-ULA 25.1 (7.1 s), DPS 22.7 (7.2 s), RED-Diff 21.5 (3.5 s)
    interferometry     black_hole presets: DPS 30.4 dB, RED-Diff 29.5, PnP-ULA 28.7 (closure data, 1000 steps)
The blurs not benchmarked (uniform_blur, blur) follow gaussian_blur.
"""

from __future__ import annotations

from .base import sampler_applies, sampler_class

_BLUR = (("ddrm", "deblur"), ("red_diff", "deblur"), ("resample", None), ("pnp_ula", "deblur"), ("dps", None))
AUTO: dict[str, tuple[tuple[str, str | None], ...]] = {
    "super_resolution": (("red_diff", "super_resolution"), ("resample", "super_resolution"), ("dps", None)),
    "inpaint_box": (("ddrm", "inpainting"), ("red_diff", "inpainting"), ("resample", "inpainting")),
    "inpaint_random": (("ddrm", "inpainting"), ("red_diff", "inpainting"), ("resample", "inpainting")),
    "gaussian_blur": _BLUR,
    "motion_blur": _BLUR,
    "uniform_blur": _BLUR,
    "blur": _BLUR,
    "denoise": (("ddrm", "denoise"), ("pnp_ula", None), ("red_diff", None)),
    "interferometry": (("dps", "black_hole"), ("red_diff", "black_hole"), ("pnp_ula", "black_hole")),
}
FALLBACK = (("ddrm", None), ("red_diff", None), ("resample", None), ("dps", None))


def choose_sampler(prior, op) -> tuple[str, dict]:
    """(sampler name, options) of the first sampler of `AUTO` (or `FALLBACK`) for `op` that accepts (prior, op);
    options hold its preset for the task where it has that preset registered. A one-line ValueError when none
    applies."""
    candidates = AUTO.get(op.name, FALLBACK)
    for name, preset in candidates:
        preset = preset if preset in sampler_class(name).PRESETS else None
        if sampler_applies(name, prior, op, preset or ""):
            return name, ({"preset": preset} if preset else {})
    tried = ", ".join(name for name, _ in candidates)
    raise ValueError(f"sampler='auto' found no sampler for operator '{op.name}' with this prior (tried {tried})")
