"""CPU runs reuse freed memory (priors/cpu_memory.py): glibc's malloc keeps large freed blocks for the run, and its
defaults come back when the last run ends."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from posterior_diffusion import sample_posterior
from posterior_diffusion.priors import cpu_memory
from posterior_diffusion.priors.cpu_memory import reuse_freed_memory


class RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


KEEP = [("mallopt", cpu_memory.M_MMAP_MAX, 0), ("mallopt", cpu_memory.M_TRIM_THRESHOLD, cpu_memory.KEEP_ALL)]
RESTORE = [
    ("mallopt", cpu_memory.M_MMAP_MAX, cpu_memory.DEFAULT_MMAP_MAX),
    ("mallopt", cpu_memory.M_TRIM_THRESHOLD, cpu_memory.DEFAULT_TRIM_THRESHOLD),
    ("malloc_trim", 0),
]


@pytest.fixture
def libc(monkeypatch):
    fake = RecordingLibc()
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: fake)
    return fake


def test_nested_blocks_set_once_and_restore_after_the_last_even_on_error(libc):
    with pytest.raises(RuntimeError), reuse_freed_memory("cpu"):
        assert libc.calls == KEEP
        with reuse_freed_memory(torch.device("cpu")):
            pass
        assert libc.calls == KEEP  # the inner block's end leaves the outer's setting
        raise RuntimeError("a failed run")
    assert libc.calls == KEEP + RESTORE
    assert cpu_memory._depth == 0


def test_a_gpu_run_leaves_malloc_alone(libc):
    with reuse_freed_memory("meta"):
        pass
    assert libc.calls == []


def test_a_sampler_run_on_the_cpu_reuses_freed_memory(libc, tiny_unet_folder):
    seen = []
    y = torch.zeros(3, 16, 16).uniform_(-1, 1)
    sample_posterior(
        y, "denoise", prior=str(tiny_unet_folder), sampler="ddrm", steps=3, num_samples=2, progress=False,
        callback=lambda info: seen.append(list(libc.calls)),
    )  # fmt: skip
    assert seen and all(calls == KEEP for calls in seen)  # set during every step
    assert libc.calls == KEEP + RESTORE


REUSE = """
import resource, torch
from posterior_diffusion.priors.cpu_memory import reuse_freed_memory
with reuse_freed_memory("cpu"):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        torch.ones(2**24)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="needs glibc's malloc (Linux)")
def test_a_large_block_freed_in_a_run_is_reused_without_page_faults():
    """64 MB is above glibc's largest mmap threshold: outside a run each such tensor is mapped afresh and
    faulted in (8 x 16k pages of 4 kB); inside, the heap grows to hold it in the first two or three and the others
    reuse their pages. In a fresh process: in a long one, small allocations split freed blocks and reuse is partial
    (module docstring)."""
    out = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True, check=True).stdout
    assert int(out) < 4 * 2**14
