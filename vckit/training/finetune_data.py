"""The data side of fine-tuning: the new speakers' rows and the source model's replay cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from vckit.config import Config
from vckit.data.manifest import read_data_spec
from vckit.errors import VckitError

log = logging.getLogger(__name__)


def collect_rows(data: str | os.PathLike, speaker: str | None) -> list[dict[str, Any]]:
    """Rows of the new speakers' audio (:func:`vckit.data.manifest.read_data_spec`):
    a folder (``--speaker``: all its audio is that speaker's; else
    ``data/<speaker>/...``), a CSV or a JSONL manifest, with durations."""
    if not Path(data).exists():
        raise VckitError(f"fine-tuning data not found: {data}")
    return read_data_spec(data, speaker=speaker, durations=True)


def usable_seconds(index: dict[str, Any], frame_rate: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for u in index["utterances"]:
        out[u["speaker"]] = out.get(u["speaker"], 0.0) + u["frames"] / frame_rate
    return out


def find_replay(replay: str, source_cfg: Config) -> tuple[Path, Path] | None:
    """(training manifest, feature cache) to replay, or None.

    ``"auto"``: the data the source config names, if both are here (else
    None); ``""``: None; a folder: its ``train.jsonl`` and ``features/``,
    which must exist.
    """
    if not replay:
        return None
    if replay == "auto":
        manifest, features = Path(source_cfg.data.train_manifest), Path(source_cfg.data.features)
        if manifest.is_file() and (features / "index.json").is_file():
            log.info("replay: %s and %s", manifest, features)
            return manifest, features
        log.warning("replay skipped: the source model's training data (%s, %s) is not on this machine, so fine-tuning "
                    "learns from your audio alone and other voices may drift. %s; --replay none silences this",
                    manifest, features, _replay_hint(manifest.parent, source_cfg))
        return None
    folder = Path(replay)
    if not (folder / "train.jsonl").is_file() or not (folder / "features" / "index.json").is_file():
        raise VckitError(f"--replay {folder} is not a prepared cache (it needs train.jsonl and features/; run the recipe's prepare.py)")
    return folder / "train.jsonl", folder / "features"


def _replay_hint(cache: Path, cfg: Config) -> str:
    """Where a replay cache like ``cache`` (e.g. ``cache/shared_dev``) comes from: the model's own recipe and corpus."""
    flag = " --frame-features" if frame_features_needed(cfg) else ""
    return (f"With the corpus the model was trained on, python recipes/{cache.name}/prepare.py --data CORPUS --out {cache}{flag} "
            f"builds it (--replay CACHE names one elsewhere)")


def frame_features_needed(cfg: Config) -> tuple[str, ...]:
    """The per-frame arrays the model of ``cfg`` reads besides the mels (``f0``, ``phonetic``)."""
    return tuple(n for n, on in (("f0", cfg.model.f0.enabled), ("phonetic", cfg.model.content.input != "mel")) if on)


def source_projection(source: str | os.PathLike, sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The teacher projection a phonetic-input model carries (``mean (256,)``,
    ``proj (dims, 256)``, float32); raises :class:`VckitError` if it has none."""
    try:
        mean, proj = sd["content_encoder.teacher_mean"], sd["content_encoder.teacher_proj"]
    except KeyError as e:
        raise VckitError(f"{source} reads phonetic features but its weights have no {e.args[0]}") from None
    if not bool(proj.float().abs().sum() > 0):
        raise VckitError(f"{source} reads phonetic features but carries no teacher projection (content_encoder.teacher_proj is all zeros)")
    return {"mean": mean.float().cpu().numpy(), "proj": proj.float().cpu().numpy()}


def replay_problem(features: Path, needed: tuple[str, ...], projection: dict[str, Any] | None) -> str | None:
    """Why the replay cache in ``features`` cannot train a model that reads
    ``needed`` (with teacher ``projection``), or None if it can."""
    from vckit.data.frame_features import PROJECTION_FILE, frame_arrays, load_projection, same_projection

    have = frame_arrays(features)
    missing = [n for n in needed if n not in have]
    if missing:
        return f"its cache {features} has no {', '.join(n + '.npy' for n in missing)} (prepare it with --frame-features)"
    if projection is not None:
        if not (features / PROJECTION_FILE).is_file():
            return f"its cache {features} has no {PROJECTION_FILE}"
        if not same_projection(load_projection(features), projection):
            return f"its cache {features} projects the phonetic teacher differently from the source model"
    return None
