"""CPU runs reuse freed memory: large tensors are not handed back to the operating system between network calls.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap` and unmaps it
when freed, so at photo sizes each activation of the network (a 1024x768 batch of 4 at 48 channels: 600 MB) is
faulted in page by page at every call. Measured on one core of the development AMD EPYC (torch 2.13.0, float32):
a forward pass of the built-in prior at 512x384, batch 4, took 26 s, a third of it in the kernel (11 M page
faults); with mmap off and trimming deferred for the run (`mallopt`) freed blocks are reused: 16 s (2 M faults),
peak resident memory 3.6 GB against 2.9 GB. At the end of the outermost run the settings return to glibc's
defaults and `malloc_trim` hands the memory back (resident 0.5 GB again). The reuse is partial: small allocations
split freed blocks, so the heap keeps growing for a while (a whole 1024x768 restore at 4 chains per call: 29 min
against 43 min, peak 13.7 GB against 9.2 GB; `sample_posterior` therefore gives a CPU call few chains at photo
sizes, `api.CPU_PIXELS_PER_CALL`). Below about 64x64 nothing changes: those tensors stay under the threshold.
Without glibc (macOS, Windows, musl) or on a GPU this does nothing.

    with reuse_freed_memory(device):
        ...  # network calls
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
KEEP_ALL = 2**31 - 1  # a trim threshold no run's free memory reaches (mallopt takes an int)

_lock = threading.Lock()
_depth = 0  # runs in progress: the settings change at the first and return after the last


@functools.cache
def _glibc():
    """The process's C library where it is glibc with mallopt and malloc_trim, else None (looked up once)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in needed) else None


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device | str) -> Iterator[None]:
    """For the duration of the block, freed memory is kept and reused when `device` is a CPU (module docstring);
    nested and concurrent blocks share one setting, restored when the last ends."""
    global _depth
    libc = _glibc() if torch.device(device).type == "cpu" else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
