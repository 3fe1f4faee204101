"""The one device choice: ``auto``, ``cpu``, ``cuda`` (this process's GPU under torchrun), ``cuda:N`` or ``mps``.

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
