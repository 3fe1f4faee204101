"""Where the shipped models are: a clone's ``checkpoints/``, or the copy inside an installed wheel.

A clone (``pip install -e .``) reads ``checkpoints/<name>`` beside the package
(and the example swaps in ``examples/``).
A wheel carries the same folders as package data, ``vckit/_shipped/<name>``
(``setup.py``'s build step copies them in), so ``vckit.load()``, ``vckit info
default``, the live model and the demo's judge and examples work from any
folder after ``pip install vckit-*.whl``, offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from vckit.errors import CheckpointError

FOLDERS = ("default", "stream", "speaker_verification", "vocoder_fast", "examples")  # the folders a wheel carries
MODELS = ("default", "stream")  # the conversion models loadable by name: "stream" is the causal one for live use
# what vckit stream and the demo's Live tab vocode with: HiFi-GAN cannot keep up live on two cores (a 69.7 ms block
# took 59 ms, 80 at the 99th percentile, on 2026-12-07); the fast one distilled from it takes 28-31 / 36-39 ms
LIVE_VOCODER = "fast"
REPO_ROOT = Path(__file__).resolve().parents[1]
ROOTS = (REPO_ROOT / "checkpoints", Path(__file__).resolve().parent / "_shipped")  # a clone first, then the wheel's copy


def clone_dir(name: str) -> Path:
    """Where a clone keeps shipped folder ``name``: the models in ``checkpoints/``, the examples at the top."""
    return REPO_ROOT / name if name == "examples" else ROOTS[0] / name


def shipped_dir(name: str) -> Path:
    """The folder of shipped model ``name`` (one of :data:`FOLDERS`); where a clone keeps it when none is found,
    so that an error can name the path."""
    for folder in (clone_dir(name), *(root / name for root in ROOTS[1:])):
        if folder.is_dir():
            return folder
    return clone_dir(name)


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the shipped model folders (in the clone or the wheel)."""
    parent = Path(path).resolve().parent
    return any(parent == root.resolve() for root in ROOTS)


def default_checkpoint(name: str = "default") -> Path:
    """A shipped conversion model by name (``$VCKIT_CHECKPOINT`` overrides the default)."""
    env = os.environ.get("VCKIT_CHECKPOINT") if name == "default" else None
    path = Path(env) if env else shipped_dir(name)
    if not path.exists():
        raise CheckpointError(f"the shipped model is not at {path}: reinstall vckit (its wheel carries the models, a clone keeps them in checkpoints/) or pass a checkpoint path")
    return path


def checkpoint_path(checkpoint: str | os.PathLike | None) -> Path:
    """The folder of ``checkpoint``: a path, a shipped model's name (:data:`MODELS`), or None for the default."""
    if checkpoint is None or (str(checkpoint) in MODELS and not Path(checkpoint).exists()):
        return default_checkpoint(str(checkpoint or "default"))
    return Path(checkpoint)
