"""Radio interferometry from first principles: uv coverage, the visibility DFT, thermal noise, closure quantities."""

from __future__ import annotations

import math

import pytest
import torch

from posterior_diffusion.operators.closures import (
    closure_phases,
    log_closure_amplitudes,
    minimal_closure_sets,
    station_corruption,
)
from posterior_diffusion.operators.radio_array import (
    Schedule,
    load_array,
    load_source,
    thermal_sigma,
    uv_coverage,
)
from posterior_diffusion.operators.visibilities import RAD_PER_UAS, dft_matrix, pixel_offsets


@pytest.fixture(scope="module")
def sgra():
    return uv_coverage(load_array(), load_source("SgrA"))


def test_eht2017_coverage_matches_an_independent_computation(sgra):
    """Counts and longest baselines from the shared reference's own numpy check (GMST 0-24 h every 600 s, 10 deg)."""
    m87 = uv_coverage(load_array(), load_source("M87"))
    for cov, count, scans, longest in ((sgra, 1048, 107, 8.73), (m87, 837, 98, 8.37)):
        assert len(cov) == count and len(torch.unique(cov.time)) == scans
        assert float(torch.hypot(cov.u, cov.v).max()) / 1e9 == pytest.approx(longest, abs=0.01)
    spt = m87.station_names.index("SPT")
    assert not (m87.stations == spt).any()  # SPT never sees M87 above the horizon


def test_uv_points_follow_ellipses_in_time(sgra):
    """Earth rotation: for one baseline, (u, v) lie on an ellipse u^2 / a^2 + (v - v0)^2 / b^2 = 1 with
    a = |B_xy|, b = a sin(dec), v0 = B_z cos(dec) (all in wavelengths)."""
    stations, source = load_array(), load_source("SgrA")
    a_idx, b_idx = 0, 6  # PV - APEX
    sel = (sgra.stations[:, 0] == a_idx) & (sgra.stations[:, 1] == b_idx)
    baseline = (torch.tensor(stations[a_idx].position_m) - torch.tensor(stations[b_idx].position_m)).double()
    baseline = baseline / source.wavelength_m
    dec = math.radians(source.dec_deg)
    a = float(torch.hypot(baseline[0], baseline[1]))
    b, v0 = a * math.sin(dec), float(baseline[2]) * math.cos(dec)
    ellipse = (sgra.u[sel] / a) ** 2 + ((sgra.v[sel] - v0) / b) ** 2
    assert sel.sum() > 5 and torch.allclose(ellipse, torch.ones_like(ellipse), atol=1e-9)


def test_thermal_noise_follows_the_sefd_formula():
    # the shared reference's examples (4 GHz, 10 s): ALMA-LMT 0.66 mJy, SMT-JCMT 16 mJy in Stokes I
    assert thermal_sigma(90, 600, 4e9, 10) == pytest.approx(0.66e-3, rel=0.01)
    assert thermal_sigma(5000, 6000, 4e9, 10) == pytest.approx(15.6e-3, rel=0.01)
    cov = uv_coverage(load_array(), load_source("SgrA"), Schedule(integration_s=40.0))
    assert float(cov.sigma.min()) == pytest.approx(thermal_sigma(90, 600, 4e9, 40), rel=1e-9)  # 4x time: half


def test_point_source_at_the_phase_centre_gives_its_flux_everywhere():
    u = torch.tensor([0.0, 1e9, -3e9, 5e9], dtype=torch.float64)
    v = torch.tensor([0.0, 2e9, 4e9, -7e9], dtype=torch.float64)
    x = torch.zeros(5, 5, dtype=torch.float64)
    x[2, 2] = 1.7  # odd N: the centre pixel sits at l = m = 0
    vis = dft_matrix(u, v, 5, 100.0, "delta") @ x.flatten().to(torch.complex64)
    assert torch.allclose(vis, torch.full_like(vis, 1.7), atol=1e-6)
    pixel = 100.0 * RAD_PER_UAS / 5
    tri = dft_matrix(u, v, 5, 100.0, "triangle") @ x.flatten().to(torch.complex64)
    expected = 1.7 * (torch.sinc(pixel * u) * torch.sinc(pixel * v)) ** 2
    assert torch.allclose(tri.real.double(), expected, atol=1e-6) and tri.imag.abs().max() < 1e-6


def test_a_shifted_point_source_gives_the_expected_phase_ramp():
    n, fov = 8, 80.0
    u = torch.linspace(-8e9, 8e9, 9, dtype=torch.float64)
    v = torch.linspace(5e9, -5e9, 9, dtype=torch.float64)
    x = torch.zeros(n, n)
    x[1, 6] = 1.0  # row 1 (north), column 6 (west of centre)
    east, north = pixel_offsets(n, fov)
    assert float(east[6]) < 0 < float(north[1])  # east is to the left, north is up
    vis = dft_matrix(u, v, n, fov, "delta") @ x.flatten().to(torch.complex64)
    expected = torch.polar(torch.ones_like(u), 2 * math.pi * (u * east[6] + v * north[1]))
    assert torch.allclose(vis, expected.to(torch.complex64), atol=1e-5)


def test_visibilities_of_a_real_image_are_hermitian():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(20, generator=g, dtype=torch.float64) * 4e9
    v = torch.randn(20, generator=g, dtype=torch.float64) * 4e9
    a = dft_matrix(torch.cat([u, -u]), torch.cat([v, -v]), 16, 160.0)
    vis = a @ torch.rand(256, generator=g).to(torch.complex64)
    assert torch.allclose(vis[20:], vis[:20].conj(), atol=1e-5)


def test_minimal_closure_sets_have_the_non_redundant_counts(sgra):
    sets = minimal_closure_sets(sgra)
    expected_cp = expected_lca = 0
    for t in torch.unique(sgra.time):
        n = len(torch.unique(sgra.stations[sgra.time == t]))
        expected_cp += (n - 1) * (n - 2) // 2
        expected_lca += max(0, n * (n - 3) // 2)  # none with fewer than 4 stations
    assert sets.triangles.shape == (expected_cp, 3) and sets.quadrangles.shape == (expected_lca, 4)
    # each triangle's legs close: the signed baselines of a triangle sum to zero in (u, v)
    closing = (sgra.u[sets.triangles] * sets.triangle_signs).sum(-1)
    assert closing.abs().max() < 1e-3 * sgra.u.abs().max()


def test_closure_quantities_ignore_station_gains_and_phases(sgra):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 32 * 32, generator=g).to(torch.complex128)
    vis = x @ dft_matrix(sgra.u, sgra.v, 32, 160.0).to(torch.complex128).T
    corrupted = vis * station_corruption(sgra, 0.1, generator=g)
    sets = minimal_closure_sets(sgra)
    assert not torch.allclose(corrupted.angle(), vis.angle(), atol=1e-3)  # the corruption is real
    dphi = closure_phases(corrupted, sets) - closure_phases(vis, sets)
    assert torch.sin(dphi).abs().max() < 1e-9
    assert torch.allclose(log_closure_amplitudes(corrupted, sets), log_closure_amplitudes(vis, sets), atol=1e-9)


@pytest.fixture(scope="module")
def eht():
    from posterior_diffusion.operators import get_operator

    return get_operator("interferometry"), get_operator("interferometry", data="vis")


def _ring(n: int = 64) -> torch.Tensor:
    """A ring of radius ~n/5 pixels in [-1, 1] (x = -1 is empty sky)."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    r = torch.hypot(i - n / 2 + 0.5, j - n / 2 + 0.5)
    return (2 * torch.exp(-0.5 * ((r - n / 5) / 2.0) ** 2) - 1)[None, None]


def test_visibility_adjoint_identity(eht):
    _, vis_op = eht
    g = torch.Generator().manual_seed(0)
    b = torch.rand(1, 64 * 64, generator=g)
    w = torch.randn(1, len(vis_op.coverage), generator=g, dtype=torch.complex64)
    lhs = torch.vdot(w[0], (b.to(torch.complex64) @ vis_op.matrix_t)[0]).real
    y_w = torch.cat([w.real, w.imag], dim=-1)
    rhs = (b * vis_op.dirty_image(y_w).flatten(1) * len(vis_op.coverage)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_thermal_noise_on_the_visibilities_has_the_sefd_sigma(eht):
    _, vis_op = eht
    x = _ring().expand(64, -1, -1, -1)
    y = vis_op.measure(x, torch.Generator().manual_seed(0))
    ratio = (y - vis_op.forward(x)).std(0) / vis_op.sigma.repeat(2)
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)


def test_closure_likelihood_is_calibrated_and_ignores_station_gains():
    from posterior_diffusion.operators import get_operator

    x = _ring().expand(8, -1, -1, -1)
    for gain_std in (0.0, 0.2):
        op = get_operator("interferometry", gain_std=gain_std, peak_jy=0.05)
        y = op.measure(x, torch.Generator().manual_seed(1))
        chi2 = op.noise.chi_squares(y, op.forward(x))
        assert 0.8 < float(chi2["cphase"].mean()) < 1.25 and 0.8 < float(chi2["logcamp"].mean()) < 1.25
        # amplitudes fit at the noise level only without station gain errors
        assert (float(chi2["amp"].mean()) < 1.25) == (gain_std == 0.0)


def test_interferometry_refuses_what_does_not_apply():
    from posterior_diffusion.operators import get_operator

    op = get_operator("interferometry", image_size=32)
    with pytest.raises(ValueError, match=r"images are \(1, 32, 32\)"):
        op.measure(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="models its own noise"):
        get_operator("interferometry", noise_sigma=0.1)
    with pytest.raises(ValueError, match="data must be one of"):
        get_operator("interferometry", data="bispectrum")


def test_dps_runs_on_closure_data():
    from diffusers import UNet2DModel

    from posterior_diffusion import sample_posterior
    from posterior_diffusion.operators import get_operator
    from posterior_diffusion.priors import UNetPrior
    from posterior_diffusion.priors.base import linear_alphas_cumprod

    torch.manual_seed(0)
    net = UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
    )
    prior = UNetPrior(net, linear_alphas_cumprod())
    op = get_operator("interferometry", image_size=32, fov_uas=160.0)
    y = op.measure(_ring(32), torch.Generator().manual_seed(0))
    res = sample_posterior(y, op, prior=prior, sampler="dps", steps=3, step_size=1e-3, progress=False)
    assert res.samples.shape == (1, 1, 1, 32, 32) and torch.isfinite(res.samples).all()  # (B, S, C, H, W)


def test_procedural_black_holes_are_rings_around_a_shadow(tmp_path):
    from posterior_diffusion.eht.black_holes import black_hole_images, write_black_hole_folder

    x = black_hole_images(32, size=64, seed=0)
    assert x.shape == (32, 1, 64, 64) and float(x.min()) >= 0 and torch.allclose(x.amax((1, 2, 3)), torch.ones(32))
    assert torch.equal(x, black_hole_images(32, size=64, seed=0))  # seeded
    from posterior_diffusion.eht.black_holes import BlackHoleModel

    centred = black_hole_images(32, size=64, seed=1, model=BlackHoleModel(offset_uas=0.0))[:, 0]
    i, j = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    r = torch.hypot(i - 31.5, j - 31.5).round()
    profile = torch.stack([centred[:, r == k].mean(-1) for k in range(1, 20)], dim=1)  # radial profile, r = 1..19
    peak_radius = (profile.argmax(1) + 1) * 160 / 64  # microarcseconds
    assert ((peak_radius > 12) & (peak_radius < 31)).all()  # the ring radius range, 15-28 uas, within a pixel
    assert (profile[:, 0] < 0.6 * profile.max(1).values).all()  # a shadow inside the ring
    folder = write_black_hole_folder(tmp_path / "bh", 3, size=32)
    assert sorted(p.name for p in folder.iterdir()) == ["bh_00000.png", "bh_00001.png", "bh_00002.png"]


def test_black_hole_metrics():
    from posterior_diffusion.eht.metrics import aligned_psnr, blurred_psnr, closure_chi_squares
    from posterior_diffusion.metrics import psnr
    from posterior_diffusion.operators import get_operator

    truth = _ring(32)
    shifted = torch.roll(truth, (2, -1), dims=(-2, -1))  # the ring stays inside the image
    assert float(psnr(shifted, truth)) < 20 and float(aligned_psnr(shifted, truth)) > 60  # the shift is undone
    noisy = truth + 0.2 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    assert float(blurred_psnr(noisy, truth, 20.0, 160.0)) > float(aligned_psnr(noisy, truth))  # blur hides noise
    op = get_operator("interferometry", image_size=32, peak_jy=1.0, gain_std=0.1)  # high SNR: Gaussian closures
    y = op.measure(truth.expand(4, -1, -1, -1), torch.Generator().manual_seed(2))
    dimmer = (truth + 1) / 2 * 0.5 * 2 - 1  # half the flux: closures and the flux matching make it as good
    for image in (truth, dimmer):
        chi2 = closure_chi_squares(op, y, image.expand(4, -1, -1, -1))
        assert all(float(v.mean()) < 1.3 and (v >= 1).all() for v in chi2.values())
    moved = closure_chi_squares(op, y, torch.roll(_ring(32), (2, -1), dims=(-2, -1)).expand(4, -1, -1, -1))
    assert float(moved["cphase"].mean()) < 1.3  # a shifted ring has the same closure phases...
    blob = -torch.ones(4, 1, 32, 32)
    blob[..., 12:20, 12:16] = 1
    assert float(closure_chi_squares(op, y, blob)["cphase"].mean()) > 3  # ...but another shape does not


def test_visibilities_and_closures_match_ehtim(tmp_path):
    """ehtim's direct DFT (triangle pulse, GMST schedule, no noise) on the same image, array and schedule."""
    eh = pytest.importorskip("ehtim", reason="ehtim (optional, GPLv3) is not installed: the cross-check did not run")
    import numpy as np

    stations, source = load_array(), load_source("SgrA")
    lines = [f"{s.name} {s.position_m[0]} {s.position_m[1]} {s.position_m[2]} {s.sefd_jy}" for s in stations]
    (tmp_path / "array.txt").write_text("\n".join(lines) + "\n")
    array = eh.array.load_txt(str(tmp_path / "array.txt"))
    n, fov = 32, 160.0
    image = np.random.default_rng(0).random((n, n))
    im = eh.image.Image(image, fov * RAD_PER_UAS / n, source.ra_hours, source.dec_deg, rf=source.frequency_hz)
    obs = im.observe(array, 10, 600, 0, 24, source.bandwidth_hz, timetype="GMST", ttype="direct",
                     add_th_noise=False, ampcal=True, phasecal=True, verbose=False)  # fmt: skip
    cov = uv_coverage(stations, source, Schedule())
    a = dft_matrix(cov.u, cov.v, n, fov, dtype=torch.complex128)
    vis = (a @ torch.from_numpy(image).flatten().to(torch.complex128)).numpy()
    names = cov.station_names
    ours = {(round(t, 6), names[i], names[j]): k for k, (t, (i, j)) in enumerate(zip(cov.time.tolist(),
            cov.stations.tolist(), strict=True))}  # fmt: skip
    assert len(obs.data) == len(ours)
    for row in obs.data:  # ehtim may store a baseline the other way round: then u, v flip and V is conjugated
        key = (round(float(row["time"]), 6), str(row["t1"]), str(row["t2"]))
        flip = key not in ours
        k = ours[(key[0], key[2], key[1])] if flip else ours[key]
        sign = -1 if flip else 1
        assert abs(row["u"] - sign * float(cov.u[k])) < 1 and abs(row["v"] - sign * float(cov.v[k])) < 1  # wavelengths
        expected = np.conj(vis[k]) if flip else vis[k]
        assert abs(row["vis"] - expected) <= 1e-6 * abs(expected) + 1e-9
        assert row["sigma"] == pytest.approx(float(cov.sigma[k]), rel=1e-9)

    def oriented(t, i, j):
        key = (round(float(t), 6), str(i), str(j))
        return vis[ours[key]] if key in ours else np.conj(vis[ours[(key[0], key[2], key[1])]])

    cphases = obs.c_phases(count="min", vtype="vis", ang_unit="rad")
    assert len(cphases) == len(minimal_closure_sets(cov).triangles)
    for row in cphases:
        ours_cp = np.angle(oriented(row["time"], row["t1"], row["t2"]) * oriented(row["time"], row["t2"], row["t3"])
                           * oriented(row["time"], row["t3"], row["t1"]))  # fmt: skip
        assert abs(np.sin(ours_cp - row["cphase"])) < 1e-6
    lcamps = obs.c_amplitudes(vtype="vis", count="min", ctype="logcamp", debias=False)
    assert len(lcamps) == len(minimal_closure_sets(cov).quadrangles)
    for row in lcamps:  # (12)(34) / (14)(23)
        t, s1, s2, s3, s4 = row["time"], row["t1"], row["t2"], row["t3"], row["t4"]
        logs = [np.log(abs(oriented(t, p, q))) for p, q in ((s1, s2), (s3, s4), (s1, s4), (s2, s3))]
        assert abs(logs[0] + logs[1] - logs[2] - logs[3] - row["camp"]) < 1e-6


def test_black_hole_figure_writes_a_png(tmp_path):
    from posterior_diffusion.eht.figure import black_hole_figure
    from posterior_diffusion.operators import get_operator

    op = get_operator("interferometry", image_size=32)  # closure data: the dirty image comes from a "vis" twin
    truth = _ring(32)[0]
    samples = truth + 0.1 * torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    black_hole_figure(op, truth, samples, samples.mean(0), samples.std(0), tmp_path / "bh.png")
    assert (tmp_path / "bh.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pnp_ula_asks_for_the_lipschitz_constant_of_a_closure_likelihood(gmm):
    """Closure likelihoods have no Gaussian sigma to derive PnP-ULA's step from: a clear error, and the option."""
    from posterior_diffusion.operators import get_operator
    from posterior_diffusion.samplers import get_sampler

    op = get_operator("interferometry", image_size=16, stop_gmst=2.0)
    sampler = get_sampler("pnp_ula")
    with pytest.raises(ValueError, match=r"pnp_ula derives its step from Gaussian .* pass lipschitz="):
        sampler.step_sizes(gmm, op, (1, 16, 16))
    assert get_sampler("pnp_ula", lipschitz=1e4).step_sizes(gmm, op, (1, 16, 16))["L_y"] == 1e4


def test_samples_of_closure_data_are_aligned_before_averaging():
    """Closure data are shift-invariant: samples that are translated copies align onto the first one exactly,
    and the bench's mean of such samples (aligned by the black-hole task) is the image, not a blur of copies."""
    from posterior_diffusion.bench.run import _aligned
    from posterior_diffusion.eht.metrics import align_samples
    from posterior_diffusion.operators import get_operator
    from posterior_diffusion.tasks import get_task

    x = torch.rand(2, 1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    copies = [torch.roll(x[:, 0], shift, dims=(-2, -1)) for shift in [(3, -5), (-7, 2)]]
    samples = torch.cat([x, torch.stack(copies, 1)], 1)  # (2, 3, 1, 16, 16)
    assert torch.equal(align_samples(samples), x.expand_as(samples))
    op = get_operator("interferometry", stop_gmst=1.0)
    assert op.shift_invariant and not op.with_data("vis").shift_invariant
    result = _aligned({}, get_task("black_hole").align(op, samples))
    assert torch.allclose(result["mean"], x[:, 0]) and result["std"].abs().max() < 1e-6


def test_residual_gradient_of_closure_data_matches_autograd(eht):
    """RED-Diff steps with op.residual_gradient (autograd through the closure products for this nonlinear
    operator), also when it is called in inference mode."""
    closure_op, _ = eht
    x = _ring()
    y = closure_op.measure(x, torch.Generator().manual_seed(0))
    x_guess = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    (expected,) = torch.autograd.grad(closure_op.residual_norm(y, x_guess).square().sum() / 2, x_guess)
    with torch.inference_mode():
        got = closure_op.residual_gradient(y, x_guess.detach())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
