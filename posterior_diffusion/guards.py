"""Checks before work: counts that must be positive, files read without running their code, allocations sized
against the memory there is.

Both end in one-line errors (ValueError, FileNotFoundError) that name the file or the size and the fix.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

GIB = 2**30


def check_counts(**counts) -> None:
    """A one-line ValueError for the first of `counts` (name=value; None means "not given") that is not an integer
    >= 1: image sizes, image and sample counts, batch sizes."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


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
    except pickle.UnpicklingError:
        code = _code_globals(path)
        if not code:
            raise ValueError(f"{what} '{path}' is not a torch file (torch.save) or is damaged") from None
        raise ValueError(
            f"{what} '{path}' contains pickled code, not a plain state dict or tensor (it refers to {code[0]}), which "
            "is never run: it is not loaded. If you trust its source, re-save its tensors as a plain dict of tensors "
            "or .safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} '{path}' is not a readable torch file: {reason}") from None


SAFE_GLOBAL_MODULES = ("torch", "collections", "numpy")  # what plain tensors and containers pickle refer to


def _code_globals(path: Path) -> list[str]:
    """The globals ("module.name") outside `SAFE_GLOBAL_MODULES` that the pickle of a torch.save file refers to, read
    from its opcodes (never unpickled), so that a refusal names the code whatever words torch uses for it; [] for a
    file that is not a torch zip or holds none."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    except (OSError, zipfile.BadZipFile):
        return []
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except ValueError:  # a truncated pickle: what was read so far
        pass
    return [g for g in found if g.split(".")[0] not in SAFE_GLOBAL_MODULES]


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
      took 0.80 s against 1.38 s in float32, PSNR of the mean 30.18 against 30.19 dB (assets/bench/speed/README.md).
    - CPUs with native bfloat16 (`native_cpu_bfloat16`): on an Intel Xeon with AMX the built-in prior ran 2.5-2.8x
      faster than in float32 (forward; forward + backward, batch 16, 64 px) and the PSNR of the mean moved by
      +0.07 dB (DiffPIR) and -0.07 dB (DPS-100) on the bench's hdr task (assets/bench/quality_per_second/README.md).
    - Other GPUs, other CPUs (emulated bfloat16 was 85x slower), other devices: float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and native_cpu_bfloat16():
        return torch.bfloat16
    return torch.float32
