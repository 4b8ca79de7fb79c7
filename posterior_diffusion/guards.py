"""Checks before work: files read without running their code, allocations sized against the memory there is.

Both end in one-line errors (ValueError, FileNotFoundError) that name the file or the size and the fix.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

GIB = 2**30


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that can be allocated now on `device`: free GPU memory for CUDA, else the host's available memory
    (/proc/meminfo MemAvailable, or free physical pages where there is no /proc)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed: int, device: torch.device | str, what: str, fix: str) -> None:
    """Refuse `what` before allocating when its estimated `needed` bytes exceed what `device` has available."""
    available = available_memory(device)
    if needed > available:
        raise ValueError(
            f"{what} needs about {needed / GIB:.3g} GiB of memory but {device} has {available / GIB:.3g} GiB "
            f"available; {fix}"
        )


def load_torch_file(path: str | os.PathLike, what: str):
    """`torch.load(path, weights_only=True)` on the CPU: plain tensors and containers only, never code.

    A missing, empty, corrupt or code-carrying file is a one-line error naming `what` (e.g. "checkpoint") and
    the file; torch's advice to load a refused file with weights_only=False is never relayed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} '{path}' is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise ValueError(f"{what} '{path}' is not a torch file (torch.save) or is damaged") from None
        raise ValueError(
            f"{what} '{path}' contains pickled code, not a plain state dict or tensor (it refers to {found.group(1)}): "
            "it is not loaded. If you trust its source, re-save its tensors as a plain dict of tensors or .safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} '{path}' is not a readable torch file: {reason}") from None


def native_cpu_bfloat16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bfloat16 natively: True when /proc/cpuinfo lists avx512_bf16, amx_bf16 (x86) or
    bf16 (Arm), False when it lists none of them, None where there is no /proc/cpuinfo (macOS, Windows).
    Without native kernels torch emulates bfloat16, and a network runs far slower than in float32 (measured on
    an AMD EPYC without AVX-512: 51 s against 0.6 s for one forward of the built-in prior, batch 4, 64 px)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set(re.findall(r"[\w.]+", " ".join(re.findall(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.M))))
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The network dtype of dtype="auto" on `device`: bfloat16 where the hardware computes it natively and it was
    measured faster at the same quality, float32 elsewhere.

    - CUDA with bfloat16 (Ampere and newer, `torch.cuda.is_bf16_supported`): on one H100 the README's first command
      took 0.80 s against 1.38 s in float32, PSNR of the mean 30.18 against 30.19 dB (README, Install).
    - CPUs with native bfloat16 (`native_cpu_bfloat16`): on an Intel Xeon with AMX the built-in prior ran 2.5-2.8x
      faster than in float32 (forward; forward + backward, batch 16, 64 px) and the PSNR of the mean moved by
      +0.07 dB (DiffPIR) and -0.07 dB (DPS-100) on the bench's hdr task (README, Quality per second).
    - Other GPUs, other CPUs (emulated bfloat16 was 85x slower), other devices: float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and native_cpu_bfloat16():
        return torch.bfloat16
    return torch.float32
