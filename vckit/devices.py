"""The one device choice: ``auto``, ``cpu``, ``cuda`` (this process's GPU under torchrun), ``cuda:N`` or ``mps``;
and the one precision choice of the vocoder at conversion time (:func:`vocoder_dtype`).

Low in the layers, so that inference (``vckit.api``), the CLI and the trainers share it.
"""

from __future__ import annotations

import torch

from vckit.errors import VckitError


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` (this process's GPU under torchrun), ``cuda:N`` or ``mps``.

    Raises :class:`VckitError` for an unknown or unavailable device.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise VckitError("--device cuda was asked for, but no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise VckitError("--device mps was asked for, but MPS is not available")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise VckitError(f"unknown device {device!r} (auto, cpu, cuda or mps)")
    return torch.device("cuda", local_rank) if device == "cuda" and local_rank else torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively (a CPU with AVX512-BF16 or AMX; CUDA): there
    the vocoder runs in bfloat16 by default, elsewhere emulated bfloat16 could be slower."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def vocoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The vocoder's dtype for ``precision``: ``fp32``, ``bf16``, or ``auto`` (bf16 where
    ``device`` has it natively, :func:`native_bf16`; else fp32). :class:`VckitError` for another word."""
    if precision not in PRECISIONS:
        raise VckitError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32
