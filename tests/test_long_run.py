"""The one-line notice before a long run (samplers/long_run.py): the estimate, the suggestions, once per run."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from posterior_diffusion import get_operator, sample_posterior
from posterior_diffusion.calibration import calibration_from_samples
from posterior_diffusion.samplers import long_run
from posterior_diffusion.samplers.long_run import LongRunNotice, format_duration


def test_durations_read_as_a_person_would_say_them():
    assert [format_duration(s) for s in (45, 719, 6900)] == ["45 s", "12 min", "1 h 55 min"]


def test_a_run_past_ten_minutes_names_its_length_and_what_is_faster():
    """0.5 s per evaluation x 4000 = 33 min: fewer steps (1000 x 600 / 2000 = 300), the CPU budget, a GPU."""
    with pytest.warns(UserWarning) as caught:
        LongRunNotice("dps", 1000, 4000, on_gpu=False).check(0.5)
    message = str(caught[0].message)
    assert message.startswith("dps: this run will take about 33 min (4000 network evaluations at 0.5 s)")
    assert "steps=300" in message and "--device cuda" in message
    assert "budget='cpu'" in message and "--sampler-param budget=cpu" in message and "20 steps" in message
    assert "num-samples" not in message  # one sample already
    with pytest.warns(UserWarning) as caught:
        LongRunNotice("dps", 1000, 4000, on_gpu=True).check(0.5)
    assert "cuda" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LongRunNotice("dps", 1000, 4000, on_gpu=False).check(0.1)  # 400 s: nothing to say


def test_a_run_whose_settings_a_calibration_fixes_hears_only_of_a_gpu():
    """Fewer steps, one sample or the CPU budget would be refused with the calibration the user gave."""
    with pytest.warns(UserWarning) as caught:
        LongRunNotice("diffpir", 100, 400, on_gpu=False, num_samples=4, settings_fixed=True).check(5.0)
    assert str(caught[0].message).endswith(
        "(400 network evaluations at 5 s); faster: a GPU (device='cuda' / --device cuda)"
    )
    with pytest.warns(UserWarning) as caught:
        LongRunNotice("diffpir", 100, 400, on_gpu=True, num_samples=4, settings_fixed=True).check(5.0)
    assert str(caught[0].message).endswith("(400 network evaluations at 5 s)")


def test_the_estimate_times_the_steps_after_the_first_and_speaks_once(monkeypatch):
    """Step 1 (with the warm-up) ends at 100 s and is not timed; the next TIMED_STEPS take 1 s per evaluation: 1000
    evaluations are predicted at 1000 s, said once after the last timed step, and never again."""
    clock = iter(range(100, 200))
    monkeypatch.setattr(long_run.time, "perf_counter", lambda: float(next(clock)))
    notice = LongRunNotice("ddrm", 1000, 1000, on_gpu=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(long_run.TIMED_STEPS):
            notice.update(1)
        assert len(caught) == 0
        notice.update(1)
        for _ in range(20):
            notice.update(1)
    assert len(caught) == 1 and "about 17 min" in str(caught[0].message)


def test_a_first_step_far_past_the_limit_speaks_at_once(monkeypatch):
    """A 1024x768 photo on one CPU core: the first of 20 steps takes 138 s, so the run will take 46 min (more than
    FIRST_STEP_MARGIN x 10 min): said right after that step, not after TIMED_STEPS more (another 7 min), and once."""
    clock = iter([0.0, 138.0, *range(276, 4000, 138)])
    monkeypatch.setattr(long_run.time, "perf_counter", lambda: float(next(clock)))
    notice = LongRunNotice("diffpir", 20, 20, on_gpu=False, num_samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notice.update(1)
        message = str(caught[0].message)
        assert (
            len(caught) == 1
            and "take up to about 46 min (20 network evaluations at 1.4e+02 s, timed on the first step" in message
        )
        assert "steps=4" in message and "--num-samples 1: about 12 min, no std" in message
        assert "budget" not in message  # 20 steps: already the CPU budget
        for _ in range(19):
            notice.update(1)
    assert len(caught) == 1


def test_a_first_step_just_past_the_limit_waits_for_the_timed_steps(monkeypatch):
    """A slow first step (warm-up) predicting 15 min does not speak: the steady 1 s per evaluation says 5 min."""
    clock = iter([0.0, 3.0, *range(4, 400)])
    monkeypatch.setattr(long_run.time, "perf_counter", lambda: float(next(clock)))
    notice = LongRunNotice("ddrm", 300, 300, on_gpu=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(300):
            notice.update(1)


def test_a_sampler_run_gives_the_notice(tiny_unet_folder, monkeypatch):
    monkeypatch.setattr(long_run, "LONG_RUN_SECONDS", 0.0)
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    with pytest.warns(UserWarning, match=r"ddrm: this run will take (up to )?about .* \(12 network evaluations"):
        sample_posterior(
            y,
            "denoise",
            prior=str(tiny_unet_folder),
            sampler="ddrm",
            steps=6,
            num_samples=2,
            batch_size=1,
            progress=False,
        )


def test_a_calibrated_run_gives_the_notice_without_the_settings_it_fixes(gmm, monkeypatch):
    """sample_posterior(calibration=FILE) tells the sampler that its settings are the file's."""
    monkeypatch.setattr(long_run, "LONG_RUN_SECONDS", 0.0)
    op = "denoise"
    y = torch.zeros(1, 1, 8, 8)
    with pytest.warns(UserWarning, match="steps="):  # uncalibrated: every faster setting
        run = sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=5, num_samples=4, progress=False)
    truth = torch.zeros(2, 1, 8, 8)
    cal = calibration_from_samples(truth[:, None] + torch.randn(2, 4, 1, 8, 8), truth, run.config, "denoise_test")
    with pytest.warns(UserWarning) as caught:
        sample_posterior(y, op, prior=gmm, sampler="ddrm", steps=5, num_samples=4, progress=False, calibration=cal)
    message = next(str(w.message) for w in caught if "this run will take" in str(w.message))
    assert "steps=" not in message and "num-samples" not in message and "--device cuda" in message


def test_calibrate_estimates_all_its_images_in_one_notice(gmm, monkeypatch):
    """`calibrate` samples every image in one call by default, so its one notice counts all their evaluations;
    images_per_call splits the run into calls that each estimate only their own share."""
    from posterior_diffusion.api import SamplingSettings
    from posterior_diffusion.calibrate_run import calibrate

    monkeypatch.setattr(long_run, "LONG_RUN_SECONDS", 0.0)
    x = gmm.sample(12, torch.Generator().manual_seed(0)).float()
    settings = SamplingSettings(prior=gmm, sampler="ddrm", num_samples=4, batch_size=4, options={"steps": 5})

    def evaluations(**chunking):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            calibrate(x, get_operator("denoise", noise_sigma=0.1), "denoise_test", settings, **chunking)
        notices = [str(w.message) for w in caught if w.category is long_run.LongRunWarning]
        return [int(re.search(r"\((\d+) network evaluations", m).group(1)) for m in notices]

    (whole,) = evaluations()
    assert evaluations(images_per_call=6) == [whole // 2, whole // 2]
