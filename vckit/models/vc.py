"""The disentangling voice-conversion model: content + speaker -> mel."""

from __future__ import annotations

import torch
from torch import nn

from vckit.config import MelConfig, ModelConfig
from vckit.models.classifier import SpeakerClassifier, grad_reverse
from vckit.models.content import ContentEncoder, VectorQuantizer
from vckit.models.decoder import Decoder
from vckit.models.speaker import SpeakerEncoder


class VoiceConversionModel(nn.Module):
    """Content encoder (+ VQ) , speaker encoder, AdaIN decoder, adversary.

    All public methods take and return *log-mels* in the units of the mel
    front-end, ``(batch, n_mels, frames)``; the normalisation is internal.
    The classifier exists only when ``cfg.classifier.enabled`` and
    ``cfg.n_speakers > 0`` (it is not needed, nor shipped, for inference).
    """

    def __init__(self, mel: MelConfig, cfg: ModelConfig):
        super().__init__()
        self.mel_cfg = mel
        self.cfg = cfg
        n = mel.n_mels
        self.content_encoder = ContentEncoder(n, cfg.content)
        self.vq = VectorQuantizer(cfg.content.dim, cfg.vq) if cfg.vq.enabled else None
        self.speaker_encoder = SpeakerEncoder(n, cfg.speaker)
        self.decoder = Decoder(cfg.content.dim, cfg.speaker.dim, n, cfg.decoder, cfg.content.downsample)
        if self.decoder.hop != self.content_encoder.hop:
            raise ValueError("decoder upsampling does not mirror the content encoder's downsampling")
        self.classifier = (
            SpeakerClassifier(cfg.content.dim, cfg.n_speakers, cfg.classifier)
            if cfg.classifier.enabled and cfg.n_speakers > 0
            else None
        )

    # -- units -------------------------------------------------------------
    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.cfg.mel_mean) / self.cfg.mel_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cfg.mel_std + self.cfg.mel_mean

    # -- parts -------------------------------------------------------------
    def encode_content(self, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """log-mel (B, n_mels, T) -> codes (B, dim, ceil(T / hop)) and aux terms."""
        codes = self.content_encoder(self.normalize(mel))
        aux: dict[str, torch.Tensor] = {"continuous": codes}  # before VQ and noise
        if self.cfg.content.kl_weight > 0:
            aux["kl"] = 0.5 * codes.float().pow(2).mean()
        if self.vq is not None and (self.training or self.cfg.vq.at_inference):
            quantized, commit, stats = self.vq(codes)
            mix = 1.0 if self.training else self.cfg.vq.inference_mix
            codes = quantized if mix >= 1.0 else codes + mix * (quantized - codes)
            aux["vq"] = commit
            aux["perplexity"] = stats["perplexity"]
            aux["codebook_usage"] = stats["usage"]
        if self.training and self.cfg.content.noise_std > 0:
            codes = codes + self.cfg.content.noise_std * torch.randn_like(codes)
        return codes, aux

    def embed_speaker(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> speaker embedding (B, spk_dim)."""
        return self.speaker_encoder(self.normalize(mel))

    def decode(self, codes: torch.Tensor, spk: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """codes (B, dim, T'), spk (B, spk_dim) -> log-mel (B, n_mels, frames)."""
        out = self.decoder(codes, spk)
        if frames is not None:
            out = out[..., :frames]
        return self.denormalize(out)

    def convert(self, mel: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """Source log-mel (B, n_mels, T) spoken by speaker ``spk`` -> (B, n_mels, T)."""
        codes, _ = self.encode_content(mel)
        return self.decode(codes, spk, mel.shape[-1])

    # -- training ----------------------------------------------------------
    def forward(
        self,
        mel: torch.Tensor,
        ref: torch.Tensor,
        speaker_ids: torch.Tensor | None = None,
        adv_weight: float = 0.0,
        cycle: bool = False,
        perturbed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Self-reconstruction of ``mel`` with the speaker taken from ``ref``.

        mel, ref: (B, n_mels, T), ``ref`` another segment of the same speaker.
        Returns the prediction and target in normalised units (for the loss)
        and the auxiliary terms; with a classifier and ``speaker_ids``, its
        logits (the codes reach it through a gradient-reversal layer).

        With ``cycle``, each item is also decoded in the voice of the next
        item's reference, and the content encoder reads that conversion back:
        ``cycle_codes`` should match ``cycle_target`` (the source's codes
        before VQ, detached), which asks the decoder to keep the words when
        the voice changes, the case plain reconstruction never trains.

        With ``perturbed`` (``mel`` with its pitch and formants moved, same
        shape), its codes before VQ come back as ``invariance_codes``, to be
        pulled toward ``aux["continuous"]``: codes that do not move with the
        register carry less of the speaker.
        """
        frames = mel.shape[-1]
        codes, aux = self.encode_content(mel)
        spk = self.embed_speaker(ref)
        pred = self.decoder(codes, spk)[..., :frames]
        out = {"pred": pred, "target": self.normalize(mel), **aux}
        if cycle:
            conv = self.decoder(codes, spk.roll(1, 0))[..., :frames]
            out["cycle_codes"] = self.content_encoder(conv)
            out["cycle_target"] = aux["continuous"].detach()
        if perturbed is not None:
            out["invariance_codes"] = self.content_encoder(self.normalize(perturbed))
        if self.classifier is not None and speaker_ids is not None:
            out["speaker_logits"] = self.classifier(grad_reverse(codes, adv_weight))
        return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level module and in total."""
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def inference_state_dict(model: VoiceConversionModel) -> dict[str, torch.Tensor]:
    """The weights needed to convert (the adversary is left out)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}


__all__ = ["VoiceConversionModel", "count_parameters", "inference_state_dict"]
