"""sampler="auto": the sampler measured best for an operator at its default budget.

`AUTO[operator name]` lists (sampler, preset) in order of preference; the first whose capabilities accept the
prior and the operator runs (e.g. DiffPIR and PiGDM need a pixel prior, so with a latent prior a blur falls through
to RED-Diff; ReSample is first only among the latent samplers). An operator missing from the table tries
`FALLBACK`.

Where each order comes from (assets/bench/quality_per_second/README.md; 4 held-out 64x64 crops (Kodak24 kodim01,
kodim02, CBSD68 101085, 101087), the built-in RGB prior in bfloat16, 4 samples, 100 NFE (PnP-ULA 200); PSNR of
the posterior mean, seconds per image on one thread of the 2-core CPU, beside a second bench job):
    super_resolution   sr4 (bicubic, no SVD): DiffPIR 24.41 dB (11.8 s), PiGDM 24.34 (27.6 s), RED-Diff 24.22
                       (10.8 s), PnP-ULA 23.84 (21.0 s)
    inpaint_box        PiGDM 27.40 dB (22.3 s), DiffPIR 27.04 (10.7 s), RED-Diff 26.90 (7.4 s), DDRM 26.65 (10.1 s)
    inpaint_random     DiffPIR 27.05 dB (6.4 s), PiGDM 26.87 (14.9 s), DDRM 26.09 (6.8 s), RED-Diff 23.99 (6.3 s)
    gaussian_blur      reflect padding: DiffPIR 30.49 dB (20.6 s), PiGDM 30.13 (23.2 s), RED-Diff 29.49 (6.9 s)
    motion_blur        DiffPIR 27.85 dB (24.1 s), PiGDM 27.00 (24.2 s), RED-Diff 26.90 (6.9 s), PnP-ULA 26.24 (13.6 s)
    high_dynamic_range DiffPIR 28.89 dB (17.4 s), RED-Diff 24.22 (19.2 s), PnP-ULA 19.61 (38.2 s)
    phase_retrieval    best of 4 runs: DiffPIR 19.80 dB, RED-Diff 15.38
    denoise            (the earlier run: 8 Kodak24 crops, float32) DDRM 29.7 dB (3.6 s), PnP-ULA 25.1 (7.1 s),
                       RED-Diff 21.5 (3.5 s)
    interferometry     black_hole presets: DPS 30.4 dB, RED-Diff 29.5, PnP-ULA 28.7 (closure data, 1000 steps)
The blurs not benchmarked (uniform_blur, blur) and the circular ones (which DDRM could take) follow gaussian_blur.
DiffPIR needs a pixel prior and Gaussian noise, PiGDM a linear operator: latent priors and Poisson noise fall
through to RED-Diff, ReSample or DPS.

On a CPU (`choose_sampler(..., on_cpu=True)`) a linear operator gets CPU_STEPS steps: a 256x256 restore then takes
about a minute on one core (assets/bench/cpu_speed/README.md) instead of five to ten. The same bench at 20 steps
(rows in assets/bench/quality_per_second/rows-steps20.jsonl; PSNR of the mean of 4 samples):
    DiffPIR-20  sr4 24.29 (100 steps: 24.41), box_inpaint 26.86 (27.04), random_inpaint 25.54 (27.05),
                gaussian_deblur 29.03 (30.49), motion_deblur 26.38 (27.85), denoise 27.42
    PiGDM-20    sr4 24.73, box_inpaint 25.82, random_inpaint 23.67, gaussian_deblur 28.94, motion_deblur 27.33,
                denoise 27.56, at 2-3x DiffPIR's time per step (a network VJP)
    DDRM-20     box_inpaint 25.49, random_inpaint 23.22, denoise 28.66 (the sampler of the README's first command)
so at 20 steps DiffPIR also leads on box inpainting (`CPU_AUTO`), and every CPU choice is at or above DDRM-20
where DDRM applies. Nonlinear operators keep their samplers' steps: DiffPIR on hdr fell from 28.89 to 20.70 dB at
20 steps (its gradient step needs them).

At 20 steps DiffPIR's data step on operators without an SVD (sr4, the reflect-padded blurs) also stops its
conjugate gradients after 5 iterations (`CPU_OPTIONS`): chosen on the bench's 8 tune crops of CBSD432 (PSNR of the
mean of 4 at 50 / 20 / 10 / 5 iterations: gaussian_deblur 30.91 / 31.03 / 31.35 / 32.24, motion_deblur 27.89 /
28.31 / 29.03 / 30.20), then on the held-out crops (rows-steps20-prox5.jsonl): gaussian_deblur 30.01 (29.03 at
50), motion_deblur 27.52 (26.38), sr4 24.29 (24.29), in a third of the time. At 100 steps the iterations make no
difference (tune crops: 33.87 / 33.85 / 33.84 at 5 / 10 / 50 on gaussian_deblur; held out 30.51 against 30.49).
"""

from __future__ import annotations

from .base import sampler_applies, sampler_class

_BLUR = (
    ("diffpir", "deblur"),
    ("pigdm", "deblur"),
    ("red_diff", "deblur"),
    ("resample", None),
    ("pnp_ula", "deblur"),
    ("dps", None),
)
_NONLINEAR = (("diffpir", None), ("red_diff", "nonlinear"), ("resample", None), ("dps", None))
AUTO: dict[str, tuple[tuple[str, str | None], ...]] = {
    "super_resolution": (
        ("diffpir", "sisr"),
        ("pigdm", "super_resolution"),
        ("red_diff", "super_resolution"),
        ("resample", "super_resolution"),
        ("dps", None),
    ),
    "inpaint_box": (
        ("pigdm", "inpainting"),
        ("diffpir", "inpaint"),
        ("red_diff", "inpainting"),
        ("ddrm", "inpainting"),
        ("resample", "inpainting"),
    ),
    "inpaint_random": (
        ("diffpir", "inpaint"),
        ("pigdm", "inpainting"),
        ("ddrm", "inpainting"),
        ("red_diff", "inpainting"),
        ("resample", "inpainting"),
    ),
    "gaussian_blur": _BLUR,
    "motion_blur": _BLUR,
    "uniform_blur": _BLUR,
    "blur": _BLUR,
    "high_dynamic_range": _NONLINEAR,
    "phase_retrieval": (("diffpir", None), ("red_diff", "nonlinear"), ("dps", "phase_retrieval")),
    "denoise": (("ddrm", "denoise"), ("pnp_ula", None), ("red_diff", None)),
    "interferometry": (("dps", "black_hole"), ("red_diff", "black_hole"), ("pnp_ula", "black_hole")),
}
FALLBACK = (("ddrm", None), ("red_diff", None), ("resample", None), ("dps", None))
CPU_STEPS = 20  # steps of the auto sampler for linear operators on a CPU (module docstring)
CPU_OPTIONS: dict[str, dict] = {"diffpir": {"prox_iters": 5}}  # ... and each sampler's options at that budget
CPU_AUTO: dict[str, tuple[tuple[str, str | None], ...]] = {  # where the order at CPU_STEPS differs from AUTO's
    "inpaint_box": (("diffpir", "inpaint"), *(entry for entry in AUTO["inpaint_box"] if entry[0] != "diffpir")),
}


def choose_sampler(prior, op, on_cpu: bool = False) -> tuple[str, dict]:
    """(sampler name, options) of the first sampler of `AUTO` (or `FALLBACK`) for `op` that accepts (prior, op);
    options hold its preset for the task where it has that preset registered. With `on_cpu` a linear
    operator takes the `CPU_AUTO` order where there is one, `CPU_STEPS` steps and the sampler's `CPU_OPTIONS`. A
    one-line ValueError when none applies."""
    cpu_budget = on_cpu and op.is_linear
    candidates = (CPU_AUTO.get(op.name) if cpu_budget else None) or AUTO.get(op.name, FALLBACK)
    for name, preset in candidates:
        preset = preset if preset in sampler_class(name).PRESETS else None
        if sampler_applies(name, prior, op, preset or ""):
            budget = {"steps": CPU_STEPS} | CPU_OPTIONS.get(name, {}) if cpu_budget else {}
            return name, ({"preset": preset} if preset else {}) | budget
    tried = ", ".join(name for name, _ in candidates)
    raise ValueError(f"sampler='auto' found no sampler for operator '{op.name}' with this prior (tried {tried})")
