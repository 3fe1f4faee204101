"""Enrolled speakers: a small safetensors file per voice, in a bank folder.

A profile holds the speaker embedding, the hash of the model that made it
(an embedding only means something to that model), the reference files and
their durations, and the reference's median F0 for pitch matching.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vckit.errors import VckitError
from vckit.files import atomic_path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_bank() -> Path:
    """``$VCKIT_BANK``, else ``$XDG_DATA_HOME/vckit/speakers`` (``~/.local/share/vckit/speakers``)."""
    env = os.environ.get("VCKIT_BANK")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vckit" / "speakers"


@dataclass
class SpeakerProfile:
    name: str
    embedding: torch.Tensor  # (dim,)
    model_id: str
    meta: dict[str, Any]

    @property
    def f0_median(self) -> float | None:
        """The references' median F0 in Hz; None when unknown (or not a positive number)."""
        try:
            v = float(self.meta.get("f0_median") or 0)
        except (TypeError, ValueError):
            return None
        return v if 0 < v < float("inf") else None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise VckitError(f"invalid speaker name {name!r}: use letters, digits, '_', '-' or '.', up to 64 characters")
    return name


def save_profile(bank: str | os.PathLike, profile: SpeakerProfile, *, overwrite: bool = False) -> Path:
    """Write ``bank/NAME.safetensors`` atomically; refuses to replace unless ``overwrite``."""
    from safetensors.torch import save_file

    bank = Path(bank)
    check_name(profile.name)
    path = bank / f"{profile.name}.safetensors"
    if path.exists() and not overwrite:
        raise VckitError(f"speaker {profile.name!r} is already enrolled in {bank} (use --overwrite to replace it)")
    meta = {"name": profile.name, "model_id": profile.model_id, "meta": json.dumps(profile.meta)}
    try:
        bank.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"embedding": profile.embedding.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    except OSError as e:
        raise VckitError(f"cannot write to the speaker bank {bank}: {e.strerror or e}") from None
    return path


def load_profile(bank: str | os.PathLike, name: str) -> SpeakerProfile:
    from safetensors import safe_open

    path = Path(bank) / f"{check_name(name)}.safetensors"
    if not path.is_file():
        known = ", ".join(p.name for p in list_profiles(bank)) or "none"
        raise VckitError(f"no enrolled speaker {name!r} in {bank} (enrolled: {known})")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            emb = f.get_tensor("embedding")
        meta = json.loads(md.get("meta", "{}"))
    except Exception:
        raise VckitError(f"speaker profile {path} is corrupt") from None
    if emb.dim() != 1 or not emb.is_floating_point() or not bool(torch.isfinite(emb).all()) or not isinstance(meta, dict):
        raise VckitError(f"speaker profile {path} is corrupt (not one finite embedding with its details)")
    return SpeakerProfile(name, emb.float(), str(md.get("model_id", "")), meta)  # named by its file, as enrolled


def list_profiles(bank: str | os.PathLike) -> list[SpeakerProfile]:
    bank = Path(bank)
    if not bank.is_dir():
        return []
    out = []
    for p in sorted(bank.glob("*.safetensors")):
        try:
            out.append(load_profile(bank, p.stem))
        except VckitError:
            continue
    return out


def speaker_id(model: Any, mel: Any) -> str:
    """A sha256 of what makes a model's speaker embeddings: its speaker encoder's weights (as float16, the
    shipped precision) and its mel analysis. Two models with the same (the live model takes the default's:
    ``train.speaker_from``) take each other's voices and enrolled speakers."""
    import hashlib

    h = hashlib.sha256(repr(sorted(vars(mel).items())).encode())
    for k, v in sorted(model.speaker_encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()


def new_profile(name: str, embedding: torch.Tensor, model_id: str, refs: list[str], seconds: float, f0_median: float | None, *,
                checkpoint: str = "", speech_seconds: float | None = None) -> SpeakerProfile:
    """A profile; ``checkpoint`` (the model folder that made ``embedding``) is kept so a refusal can name it.
    ``seconds`` is the references' audio, ``speech_seconds`` the speech in it."""
    meta = {"references": refs, "seconds": round(seconds, 2), "f0_median": f0_median, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if speech_seconds is not None:
        meta["speech_seconds"] = round(speech_seconds, 2)
    if checkpoint:
        meta["checkpoint"] = checkpoint
    return SpeakerProfile(check_name(name), embedding, model_id, meta)


@dataclass
class Enrolled:
    """What :func:`enroll` stored: the profile, its file and the voice measured from the references."""

    profile: SpeakerProfile
    path: Path
    voice: Any  # the vckit.api.Voice made from the references (this layer does not import the API)


def enroll(converter: Any, name: str, refs: list[str | os.PathLike], *, bank: str | os.PathLike | None = None, overwrite: bool = False,
           checkpoint: str | os.PathLike = "", meta: dict[str, Any] | None = None, voice: Any = None) -> Enrolled:
    """Enroll ``name`` from the reference files ``refs`` with ``converter``'s model, into ``bank``.

    ``converter``: a :class:`vckit.api.Converter` (passed in: this layer does not import the API).

    The one enrolment: ``vckit enroll``, ``vckit finetune`` and the demo all call it. The
    references are decoded once (:meth:`~vckit.api.Converter.voice`, or the ``voice`` already
    made from them); the profile keeps their absolute paths, seconds of audio and of speech,
    the median F0, the model's hash and ``checkpoint`` (the folder it came from), plus ``meta``.
    An existing profile of that name raises :class:`VckitError` before any audio is read,
    unless ``overwrite``.
    """
    bank = Path(bank) if bank is not None else default_bank()
    check_name(name)
    if (bank / f"{name}.safetensors").exists() and not overwrite:
        raise VckitError(f"speaker {name!r} is already enrolled in {bank} (use --overwrite to replace it)")
    voice = voice if voice is not None else converter.voice(refs)
    prof = new_profile(name, voice.embedding, converter.model_id, [str(Path(r).resolve()) for r in refs], voice.seconds, voice.f0_median,
                       checkpoint=str(Path(checkpoint).resolve()) if checkpoint else "", speech_seconds=voice.speech_seconds)
    prof.meta.update(meta or {})
    if getattr(converter, "speaker_id", ""):
        prof.meta["speaker_id"] = converter.speaker_id
    return Enrolled(prof, save_profile(bank, prof, overwrite=overwrite), voice)


def check_profile_model(profile: SpeakerProfile, model_id: str, checkpoint: str = "") -> None:
    """Raise :class:`VckitError` naming both models unless ``profile`` was enrolled with
    the model whose weights hash to ``model_id`` (loaded from ``checkpoint``)."""
    if not profile.model_id or not model_id or profile.model_id == model_id:
        return
    was = profile.meta.get("checkpoint", "")
    old = f"{was} (weights {profile.model_id[:12]})" if was else f"the model with weights {profile.model_id[:12]}"
    now = f"{checkpoint} (weights {model_id[:12]})" if checkpoint else f"the model with weights {model_id[:12]}"
    again = f"vckit enroll {profile.name} REF.wav ..." + (f" --checkpoint {checkpoint}" if checkpoint else "")
    back = f", or convert with --checkpoint {was}" if was else ""
    raise VckitError(f"speaker {profile.name!r} was enrolled with {old}, but the loaded model is {now}: enroll it again with this one ({again}){back}")
