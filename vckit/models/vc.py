"""The disentangling voice-conversion model: content + speaker (+ F0) -> mel."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vckit.audio import mel_filterbank
from vckit.checkpoint import check_state_dict, load_checkpoint, load_train_state, save_checkpoint
from vckit.config import Config, MelConfig, ModelConfig
from vckit.errors import CheckpointError
from vckit.frontend import Frames
from vckit.models.classifier import SpeakerClassifier, grad_reverse
from vckit.models.content import ContentEncoder
from vckit.models.decoder import Decoder
from vckit.models.phonetic_head import PhoneticHead
from vckit.models.quantizer import VectorQuantizer
from vckit.models.speaker import SpeakerEncoder
from vckit.pitch import harmonic_prior, semitone_ratio, semitones_from_log

F0_CHANNELS = 2  # normalised log-F0 (0 where unvoiced) and voicing
CHUNK_FRAMES = 4096  # convert_utterance converts longer sources in equal chunks of at most this many frames (~48 s)
CHUNK_OVERLAP = 128  # frames cross-faded between neighbouring chunks

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ContentCodes:
    """The content path's result for ``(B, *, T)`` frames; codes are at ``T / hop``."""

    codes: torch.Tensor  # (B, dim, T') what the decoder reads
    continuous: torch.Tensor  # (B, dim, T') before the VQ and the training noise
    vq_commit: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    codebook_usage: torch.Tensor | None = None
    kl: torch.Tensor | None = None


@dataclasses.dataclass
class TrainOutput:
    """One training forward pass: the reconstruction and what the losses read.

    ``pred`` and ``target`` are normalised log-mels (B, n_mels, T); the other
    fields are None when the model or the call does not make them.
    """

    pred: torch.Tensor
    target: torch.Tensor
    content: ContentCodes
    speaker_logits: torch.Tensor | None = None  # (B, n_speakers), through gradient reversal
    phonetic_logits: torch.Tensor | None = None  # (B, classes, T)
    cycle_codes: torch.Tensor | None = None  # codes of a conversion to another voice ...
    cycle_target: torch.Tensor | None = None  # ... and the source's (detached)
    invariance_codes: torch.Tensor | None = None  # codes of the mel-shifted segment
    converted: torch.Tensor | None = None  # (B, n_mels, T) normalised: each item in the next item's voice (no target: for a discriminator)
    converted_speaker: torch.Tensor | None = None  # (B, spk_dim) the embedding each conversion was decoded with


class VoiceConversionModel(nn.Module):
    """Content encoder (+ VQ), speaker encoder, AdaIN decoder (+ F0 path), adversary.

    All public methods take and return *log-mels* in the units of the mel
    front-end, ``(batch, n_mels, frames)``; the normalisation is internal.
    The classifier and the phonetic head exist only for training (they are
    not shipped); the classifier needs ``cfg.n_speakers > 0``.
    """

    def __init__(self, mel: MelConfig, cfg: ModelConfig):
        super().__init__()
        self.mel_cfg = mel
        self.cfg = cfg
        n = mel.n_mels
        self.content_encoder = ContentEncoder(n, cfg.content, cfg.stream)
        self.vq = VectorQuantizer(cfg.content.dim, cfg.vq) if cfg.vq.enabled else None
        self.speaker_encoder = SpeakerEncoder(n, cfg.speaker)
        f0_ch = F0_CHANNELS if cfg.f0.enabled else 0
        harm_ch = n if cfg.f0.enabled and cfg.f0.harmonic_prior else 0
        if harm_ch:  # not saved: made from the mel config, so checkpoints stay as they were
            self.register_buffer("filterbank", mel_filterbank(mel), persistent=False)
        self.decoder = Decoder(
            cfg.content.dim, cfg.speaker.dim, n, cfg.decoder, cfg.content.downsample, f0_channels=f0_ch, stream=cfg.stream, harmonic_channels=harm_ch
        )
        if self.decoder.hop != self.content_encoder.hop:
            raise ValueError("decoder upsampling does not mirror the content encoder's downsampling")
        self.classifier = (
            SpeakerClassifier(cfg.content.dim, cfg.n_speakers, cfg.classifier)
            if cfg.classifier.enabled and cfg.n_speakers > 0
            else None
        )
        self.phonetic_head = (
            PhoneticHead(cfg.content.dim, self.content_encoder.hop, cfg.phonetic_head)
            if cfg.phonetic_head.enabled and cfg.n_speakers > 0
            else None
        )

    # -- units -------------------------------------------------------------
    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.cfg.mel_mean) / self.cfg.mel_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cfg.mel_std + self.cfg.mel_mean

    @property
    def needs_f0(self) -> bool:
        return self.cfg.f0.enabled

    @property
    def needs_phonetic(self) -> bool:
        return self.cfg.content.input != "mel"

    def f0_features(self, f0: torch.Tensor) -> torch.Tensor:
        """F0 (B, T) in Hz, 0 = unvoiced -> decoder input (B, 2, T): normalised log-F0 (0 where unvoiced) and voicing;
        with ``f0.harmonic_prior``, (B, 2 + n_mels, T): then the log-mel comb of :func:`vckit.pitch.harmonic_prior`."""
        voiced = f0 > 0
        lf = torch.where(voiced, (torch.log(f0.float().clamp(min=1.0)) - self.cfg.f0.log_mean) / self.cfg.f0.log_std, torch.zeros_like(f0, dtype=torch.float32))
        feats = torch.stack([lf, voiced.float()], dim=1)
        if self.cfg.f0.harmonic_prior:
            comb = harmonic_prior(f0, self.filterbank, self.mel_cfg.sample_rate, self.mel_cfg.n_fft)
            feats = torch.cat([feats, comb], dim=1)
        return feats

    def _check(self, x: Frames) -> None:
        if self.needs_f0 and x.f0 is None:
            raise ValueError("this model has an F0 path: pass the source's F0 (Frames.f0)")
        if self.needs_phonetic and x.phonetic is None:
            raise ValueError("this model reads phonetic features: pass them (Frames.phonetic)")

    # -- parts -------------------------------------------------------------
    def encode_content(self, x: Frames | torch.Tensor, state: dict | None = None) -> ContentCodes:
        """Frames (or a log-mel) -> the content codes (B, dim, ceil(T / hop)).
        ``state``: a causal model's stream state (see :meth:`convert`)."""
        x = x if isinstance(x, Frames) else Frames(x)
        kind = self.cfg.content.input
        if kind != "mel" and x.phonetic is None:
            raise ValueError("this model reads phonetic features: pass them (Frames.phonetic)")
        inp = {"mel": lambda: self.normalize(x.mel), "phonetic": lambda: x.phonetic}.get(kind, lambda: torch.cat([x.phonetic, self.normalize(x.mel)], dim=1))()
        codes = self.content_encoder(inp, state)
        out = ContentCodes(codes=codes, continuous=codes)
        if self.cfg.content.kl_weight > 0:
            out.kl = 0.5 * codes.float().pow(2).mean()
        if self.vq is not None and (self.training or self.cfg.vq.at_inference):
            quantized, commit, stats = self.vq(codes)
            mix = 1.0 if self.training else self.cfg.vq.inference_mix
            codes = quantized if mix >= 1.0 else codes + mix * (quantized - codes)
            out.vq_commit, out.perplexity, out.codebook_usage = commit, stats["perplexity"], stats["usage"]
        if self.training and self.cfg.content.noise_std > 0:
            codes = codes + self.cfg.content.noise_std * torch.randn_like(codes)
        out.codes = codes
        return out

    def embed_speaker(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> speaker embedding (B, spk_dim)."""
        return self.speaker_encoder(self.normalize(mel))

    def decode(self, codes: torch.Tensor, spk: torch.Tensor, frames: int | None = None, f0: torch.Tensor | None = None, state: dict | None = None) -> torch.Tensor:
        """codes (B, dim, T'), spk (B, spk_dim), f0 (B, T) Hz -> log-mel (B, n_mels, frames)."""
        out = self.decoder(codes, spk, self.f0_features(f0) if (f0 is not None and self.needs_f0) else None, state)
        if frames is not None:
            out = out[..., :frames]
        return self.denormalize(out)

    def convert(self, x: Frames | torch.Tensor, spk: torch.Tensor, *, f0_shift: float | torch.Tensor = 0.0, state: dict | None = None) -> torch.Tensor:
        """Source frames (B, *, T) spoken by speaker ``spk`` (B, spk_dim) -> log-mel (B, n_mels, T).

        ``f0_shift`` (semitones, a number or (B,)) moves the source's F0
        before it enters the decoder: the caller sets it from the source's
        and the target's median F0 (see :func:`register_shift`).

        ``state`` (causal models only, ``model.stream.causal``): a dict that
        one stream owns; each call then converts the next block of frames (a
        multiple of the content hop) and equals one call on the whole input.
        """
        if state is not None and not self.cfg.stream.causal:
            raise ValueError("only a causal model (model.stream.causal) converts block by block")
        x = x if isinstance(x, Frames) else Frames(x)
        self._check(x)
        f0 = None
        if self.needs_f0:
            shift = torch.as_tensor(f0_shift, dtype=torch.float32, device=x.f0.device).reshape(-1, 1)
            f0 = x.f0.float() * semitone_ratio(shift)
        return self.decode(self.encode_content(x, state).codes, spk, x.frames, f0, state)

    def convert_utterance(self, x: Frames, spk: torch.Tensor, *, target_f0: float | None = None, pitch_shift: float = 0.0,
                          progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """One utterance of any length (a batch of one) -> log-mel ``(n_mels, T)`` in the voice of ``spk`` ``(spk_dim,)``.

        A model with an F0 path moves the source's register onto ``target_f0`` (Hz: the voice's
        median; None keeps the source's) plus ``pitch_shift`` semitones. Sources over
        ``CHUNK_FRAMES`` are converted in equal, overlapping chunks with a linear cross-fade, so
        memory stays bounded and no short tail gets instance statistics of its own; ``progress``
        is called with the share done.
        """
        f0_shift = 0.0
        if self.needs_f0 and x.f0 is not None:
            if target_f0 is None:
                log.warning("the target voice has no F0 median: the conversion keeps the source's register")
            f0_shift = register_shift(x.f0[0], target_f0, pitch_shift)
        n, spk = x.frames, spk[None]
        if n <= CHUNK_FRAMES + CHUNK_OVERLAP:
            whole = self.convert(x, spk, f0_shift=f0_shift)[0]
            if progress is not None:
                progress(1.0)
            return whole
        k = -(-n // CHUNK_FRAMES)
        size = -(-n // k)
        out = torch.zeros_like(x.mel[0])
        weight = torch.zeros(n, device=x.mel.device)
        ramp = torch.linspace(0, 1, CHUNK_OVERLAP + 2, device=x.mel.device)[1:-1]
        for start in range(0, n, size):
            lo, hi = max(0, start - CHUNK_OVERLAP), min(n, start + size)
            piece = self.convert(x.slice(lo, hi), spk, f0_shift=f0_shift)[0]
            w = torch.ones(hi - lo, device=x.mel.device)
            if lo > 0:
                w[:CHUNK_OVERLAP] = ramp
            out[:, lo:hi] += piece * w
            weight[lo:hi] += w
            if progress is not None:
                progress(hi / n)
        return out / weight.clamp(min=1e-6)

    # -- training ----------------------------------------------------------
    def forward(
        self,
        x: Frames | torch.Tensor,
        ref: torch.Tensor,
        *,
        speaker_ids: torch.Tensor | None = None,
        adv_weight: float = 0.0,
        cycle: bool = False,
        perturbed: torch.Tensor | None = None,
        convert: bool = False,
    ) -> TrainOutput:
        """Self-reconstruction of ``x`` with the speaker taken from ``ref``.

        x: the segment's frames (or its log-mel); ref: (B, n_mels, T) another segment of the
        same speaker. With a classifier and ``speaker_ids``, its logits (the
        codes reach it through a gradient-reversal layer of ``adv_weight``).

        With ``cycle``, each item is also decoded in the voice of the next
        item's reference and its codes are read back (``cycle_codes``, to
        match the source's ``cycle_target``). With ``perturbed`` (the mel
        moved along the mel axis), its codes come back as ``invariance_codes``.
        With ``convert``, each item is also decoded in the voice of the next
        item's reference, its F0 moved to that item's register
        (``converted``): the case a discriminator can judge but plain
        reconstruction never trains.
        """
        x = x if isinstance(x, Frames) else Frames(x)
        self._check(x)
        frames = x.frames
        content = self.encode_content(x)
        spk = self.embed_speaker(ref)
        f0 = self.f0_features(x.f0) if self.needs_f0 else None
        pred = self.decoder(content.codes, spk, f0)[..., :frames]
        out = TrainOutput(pred=pred, target=self.normalize(x.mel), content=content)
        if cycle:
            if self.needs_phonetic:
                raise ValueError("the content cycle needs a mel-reading content encoder")
            conv = self.decoder(content.codes, spk.roll(1, 0), f0)[..., :frames]
            out.cycle_codes = self.content_encoder(conv)
            out.cycle_target = content.continuous.detach()
        if perturbed is not None:
            if self.needs_phonetic:
                raise ValueError("the content-invariance loss needs a mel-reading content encoder")
            out.invariance_codes = self.content_encoder(self.normalize(perturbed))
        if convert:
            f0_conv = None
            if self.needs_f0:
                voiced = x.f0 > 0
                logf = torch.log(x.f0.float().clamp(min=1.0))
                mean = (logf * voiced).sum(1) / voiced.sum(1).clamp(min=1)  # per item, over voiced frames
                shift = (mean.roll(1, 0) - mean) * (voiced.sum(1) > 0) * (voiced.sum(1).roll(1, 0) > 0)
                f0_conv = self.f0_features(x.f0.float() * torch.exp(shift)[:, None])
            out.converted_speaker = spk.roll(1, 0)
            out.converted = self.decoder(content.codes, out.converted_speaker, f0_conv)[..., :frames]
        if self.classifier is not None and speaker_ids is not None:
            out.speaker_logits = self.classifier(grad_reverse(content.codes, adv_weight))
        if self.phonetic_head is not None:
            out.phonetic_logits = self.phonetic_head(content.codes)[..., :frames]
        return out


def register_shift(source_f0: torch.Tensor | None, target_median: float | None, semitones: float = 0.0) -> float:
    """Semitones that move the source's median F0 onto ``target_median`` (Hz), plus ``semitones``.

    source_f0: (T,) Hz, 0 = unvoiced. With too few voiced frames or no target
    median, only ``semitones`` is returned.
    """
    if source_f0 is None or target_median is None:
        return float(semitones)
    voiced = source_f0[source_f0 > 0]
    if voiced.numel() < 10:
        return float(semitones)
    src = float(voiced.float().log().median())
    return float(semitones) + semitones_from_log(src, target_median)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level module and in total."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


TRAINING_ONLY = ("classifier.", "phonetic_head.")


def inference_state_dict(model: VoiceConversionModel) -> dict[str, torch.Tensor]:
    """The weights needed to convert (the adversary and the phonetic head are left out)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(TRAINING_ONLY)}


# -- building and exporting ----------------------------------------------------
def build_model(config: Config, state_dict: dict[str, torch.Tensor] | None = None, *, for_training: bool = False):
    """The model for ``config``, with ``state_dict`` loaded strictly.

    Inference models leave out the adversarial classifier. A missing,
    unexpected or wrongly shaped tensor gives a :class:`CheckpointError`
    that names it.
    """
    model_cfg = config.model if for_training else dataclasses.replace(config.model, n_speakers=0)
    try:
        model = VoiceConversionModel(config.mel, model_cfg)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot build the model from this config: {e}") from None
    if state_dict is not None:
        if not for_training:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY)}
        check_state_dict(model, state_dict)
        model.load_state_dict(state_dict, strict=True)
    return model


def export_for_inference(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16, extra: dict[str, Any] | None = None, *, ema: bool = False) -> Path:
    """Copy a training checkpoint without the adversary, the phonetic head or the
    training state, weights cast to ``dtype``, their sha256 recorded in config.json.

    ``ema``: ship the moving average of the weights that the run kept
    (``train.ema``) instead of its last weights.
    """
    config, sd, meta = load_checkpoint(src)
    if ema:
        avg = load_train_state(src).get("ema")
        if avg is None:
            raise CheckpointError(f"{src} kept no moving average of its weights (train.ema was 0)")
        sd = {**sd, **{k: v.to(sd[k].dtype) for k, v in avg.items() if k in sd}}
        extra = {**(extra or {}), "weights": f"moving average (decay {config.train.ema})"}
    return _save_inference(dst, config, sd, meta, extra, dtype)


def _save_inference(dst: str | os.PathLike, config: Config, sd: dict[str, torch.Tensor], meta: dict[str, Any], extra: dict[str, Any] | None, dtype: torch.dtype) -> Path:
    """Write ``sd`` without the training-only tensors as an inference checkpoint, keeping the source's metadata
    (its step, lineage CPU hours, ...) with ``extra`` added, the weights' sha256 recorded."""
    sd = {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY)}
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "step", "config", "sha256")}
    keep.update(extra or {})
    return save_checkpoint(dst, config, sd, step=meta.get("step", 0), extra=keep, dtype=dtype, record_sha256=True)


def average_for_inference(srcs: list[str | os.PathLike], dst: str | os.PathLike, dtype: torch.dtype = torch.float16, extra: dict[str, Any] | None = None) -> Path:
    """Write one inference checkpoint whose weights are the mean of several (a weight average, "soup", of
    runs that left the same model, e.g. the ends of successive cool-downs). The model and mel configs must
    match; the config, step and the rest of the metadata are the first checkpoint's, the sources listed."""
    if len(srcs) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    config, total, meta = load_checkpoint(srcs[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in total.items() if not k.startswith(TRAINING_ONLY)}
    for src in srcs[1:]:
        cfg, sd, _ = load_checkpoint(src)
        if cfg.model != config.model or cfg.mel != config.mel:
            raise CheckpointError(f"{src} was trained with another model or mel config than {srcs[0]}: cannot average them")
        missing = [k for k in total if k not in sd]
        if missing:
            raise CheckpointError(f"{src} lacks {missing[0]}: cannot average it with {srcs[0]}")
        for k, v in total.items():
            if v.is_floating_point():
                v += sd[k].double()
    sd = {k: (v / len(srcs)).float() if v.is_floating_point() else v for k, v in total.items()}
    extra = {"weights": f"average of {len(srcs)} checkpoints", "averaged_from": [str(s) for s in srcs], **(extra or {})}
    return _save_inference(dst, config, sd, meta, extra, dtype)


__all__ = ["VoiceConversionModel", "Frames", "ContentCodes", "TrainOutput", "register_shift", "count_parameters", "inference_state_dict", "TRAINING_ONLY", "build_model", "export_for_inference", "average_for_inference"]
