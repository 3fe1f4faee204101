"""Training losses on normalised log-mels, and the one function that assembles them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vckit.audio import MelSpectrogram
from vckit.config import MelConfig
from vckit.errors import ConfigError
from vckit.models.vocoder.discriminators import Output


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over real frames. pred, target: (B, n_mels, T); mask: (B, T)."""
    err = (pred.float() - target.float()).abs()
    if mask is None:
        return err.mean()
    m = mask[:, None, :].float()
    return (err * m).sum() / (m.sum() * err.shape[1]).clamp(min=1)


def spectral_convergence(pred: torch.Tensor, target: torch.Tensor, mean: float, std: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """||S - S_hat||_F / ||S||_F on linear mel magnitudes (from normalised log-mels)."""
    p = torch.exp(pred.float() * std + mean)
    t = torch.exp(target.float() * std + mean)
    if mask is not None:
        p, t = p * mask[:, None], t * mask[:, None]
    return torch.linalg.norm((t - p).flatten(1), dim=1).div(torch.linalg.norm(t.flatten(1), dim=1).clamp(min=1e-5)).mean()


def adversarial_weight(step: int, weight: float, start: int, warmup: int) -> float:
    """Gradient-reversal weight: 0 before ``start``, then a linear ramp to ``weight``."""
    if step < start:
        return 0.0
    if warmup <= 0:
        return weight
    return weight * min(1.0, (step - start) / warmup)


def envelope_gradient(mel: torch.Tensor, bins: int) -> torch.Tensor:
    """``mel`` (B, n_mels, T) unchanged in value, its gradient averaged over ``bins`` neighbouring mel bins.

    A loss computed on the result can move the spectral envelope but not single bins: the harmonics that a
    voiced frame draws in the low bins get no gradient of their own from it (``bins`` <= 1: ``mel`` as it is)."""
    if bins <= 1:
        return mel
    left = (bins - 1) // 2
    padded = F.pad(mel[:, None], (0, 0, left, bins - 1 - left), mode="replicate")  # along the mel axis only
    smooth = F.avg_pool2d(padded, (bins, 1), stride=1)[:, 0]
    return smooth + (mel - smooth).detach()


def classifier_loss(logits: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy of the adversarial speaker classifier."""
    ce = F.cross_entropy(logits.float(), speaker)
    acc = (logits.argmax(-1) == speaker).float().mean()
    return ce, acc


def model_losses(out: Any, batch: dict[str, torch.Tensor], cfg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of every loss term a :class:`~vckit.models.vc.TrainOutput` asks for.

    ``cfg`` is the run's :class:`~vckit.config.Config`: the weights are
    ``train.*`` (spectral convergence, content cycle, invariance, phonetic
    distillation), ``model.vq`` (commitment) and ``model.content`` (KL).
    The classifier's cross-entropy is added unweighted: the classifier
    minimises it, and gradient reversal makes the encoder maximise it.
    Returns the total and detached statistics for logging.
    """
    t, mask = cfg.train, batch["mask"]
    recon = masked_l1(out.pred, out.target, mask)
    total = recon
    stats: dict[str, torch.Tensor] = {"loss/recon_l1": recon.detach()}

    def add(name: str, weight: float, value: torch.Tensor) -> None:
        nonlocal total
        total = total + weight * value
        stats[name] = value.detach()

    if t.spectral_convergence > 0:
        add("loss/spectral_convergence", t.spectral_convergence, spectral_convergence(out.pred, out.target, cfg.model.mel_mean, cfg.model.mel_std, mask))
    if out.cycle_codes is not None:
        add("loss/content_cycle", t.content_cycle, masked_l1(out.cycle_codes, out.cycle_target))
    if out.invariance_codes is not None:
        add("loss/content_invariance", t.content_invariance, masked_l1(out.invariance_codes, out.content.continuous))
    if out.content.kl is not None:
        add("loss/kl", cfg.model.content.kl_weight, out.content.kl)
    if out.content.vq_commit is not None:
        add("loss/vq_commit", cfg.model.vq.weight * cfg.model.vq.commitment, out.content.vq_commit)
        stats["vq/perplexity"] = out.content.perplexity
        stats["vq/usage"] = out.content.codebook_usage
    if out.phonetic_logits is not None and t.phonetic_kl > 0 and "posteriors_idx" in batch:
        from vckit.data.frame_features import dense_posteriors
        from vckit.models.phonetic_head import soft_cross_entropy

        target = dense_posteriors(batch["posteriors_idx"], batch["posteriors_p"], out.phonetic_logits.shape[1])
        add("loss/phonetic_ce", t.phonetic_kl, soft_cross_entropy(out.phonetic_logits, target, mask))
    if out.speaker_logits is not None:
        ce, acc = classifier_loss(out.speaker_logits, batch["speaker"])
        add("adv/ce", 1.0, ce)
        stats["adv/acc"] = acc.detach()
    return total, stats


# -- adversarial ----------------------------------------------------------------
# A discriminator (the mel one, or each of the vocoder's sub-discriminators) returns an Output, (scores, hidden
# activations); the losses take one per sub-discriminator and weigh each (1 where no weights are given).
KINDS = ("hinge", "lsgan")


def _weights(outputs: list[Output], weights: list[float] | None) -> list[float]:
    return [1.0] * len(outputs) if weights is None else weights


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"adversarial loss must be 'hinge' or 'lsgan', got {kind!r}")


def discriminator_loss(real: list[Output], fake: list[Output], kind: str = "lsgan", weights: list[float] | None = None) -> torch.Tensor:
    """What the discriminators minimise: real scored high, generated low, summed over sub-discriminators.

    hinge: ``mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))``; lsgan: ``mean((1 - D(x))^2) + mean(D(G(s))^2)``.
    """
    _check_kind(kind)
    total = real[0][0].new_zeros((), dtype=torch.float32)
    for (r, _), (f, _), w in zip(real, fake, _weights(real, weights)):
        r, f = r.float(), f.float()
        pair = F.relu(1 - r).mean() + F.relu(1 + f).mean() if kind == "hinge" else (1 - r).pow(2).mean() + f.pow(2).mean()
        total = total + w * pair
    return total


def generator_loss(fake: list[Output], kind: str = "lsgan", weights: list[float] | None = None) -> torch.Tensor:
    """What the generator minimises: hinge ``mean(relu(1 - D(G(s))))``, lsgan ``mean((1 - D(G(s)))^2)``."""
    _check_kind(kind)
    total = fake[0][0].new_zeros((), dtype=torch.float32)
    for (f, _), w in zip(fake, _weights(fake, weights)):
        f = f.float()
        total = total + w * (F.relu(1 - f).mean() if kind == "hinge" else (1 - f).pow(2).mean())
    return total


def feature_matching_loss(real: list[Output], fake: list[Output], weights: list[float] | None = None) -> torch.Tensor:
    """Mean L1 between hidden activations on real (targets, not differentiated) and generated input,
    averaged over the layers of each sub-discriminator and summed over sub-discriminators."""
    total = fake[0][0].new_zeros((), dtype=torch.float32)
    for (_, fr), (_, ff), w in zip(real, fake, _weights(fake, weights)):
        layer = sum((a.detach().float() - b.float()).abs().mean() for a, b in zip(fr, ff))
        total = total + w * layer / max(1, len(ff))
    return total


class MultiResolutionMelLoss(nn.Module):
    """Mean over resolutions of the L1 distance between log-mels of two waveforms ``(batch, samples)``.

    Each resolution is ``(n_fft, hop, n_mels)`` with ``win = n_fft``; the mels
    cover 0 to ``sample_rate / 2`` and use the front-end's log and floor.
    """

    def __init__(self, mel_config: MelConfig, resolutions: tuple[tuple[int, int, int], ...]):
        super().__init__()
        if not resolutions:
            raise ConfigError("loss.mel_resolutions must name at least one (n_fft, hop, n_mels)")
        mels = []
        for n_fft, hop, n_mels in resolutions:
            try:
                cfg = MelConfig(
                    sample_rate=mel_config.sample_rate,
                    n_fft=n_fft,
                    hop_length=hop,
                    win_length=n_fft,
                    n_mels=n_mels,
                    fmin=0.0,
                    fmax=mel_config.sample_rate / 2,
                    power=1.0,
                    log_floor=mel_config.log_floor,
                )
            except ConfigError as e:
                raise ConfigError(f"loss.mel_resolutions {[n_fft, hop, n_mels]}: {e}") from None
            mels.append(MelSpectrogram(cfg))
        self.mels = nn.ModuleList(mels)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.autocast(fake.device.type, enabled=False):
            fake, real = fake.float(), real.float()
            return sum(F.l1_loss(m(fake), m(real)) for m in self.mels) / len(self.mels)


class TeacherSpectralLoss(nn.Module):
    """Magnitude and phase of a waveform's STFT against a teacher's, at the front-end's own analysis.

    - magnitude: L1 of power-compressed magnitudes ``|S|^c`` (``c = compress``,
      0.3): loud bins weigh more than quiet ones, but not by their whole range;
    - phase: anti-wrapped distances ``1 - cos`` of the phase, of its step from
      frame to frame (instantaneous frequency) and from bin to bin (group
      delay), each weighted by the teacher's compressed magnitude, so bins
      whose phase is noise do not count. Unlike a complex L1, a phase the
      student has not learned yet never pulls its magnitudes down.

    Only a target whose phase is a function of the mel (a teacher vocoder's
    waveform) makes the phase terms fair.
    """

    def __init__(self, mel_config: MelConfig, compress: float = 0.3, eps: float = 1e-3):
        super().__init__()
        self.n_fft, self.hop, self.compress, self.eps = mel_config.n_fft, mel_config.hop_length, compress, eps
        self.register_buffer("window", torch.hann_window(mel_config.win_length), persistent=False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor, first: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(batch, samples)`` aligned with their mel -> (magnitude, phase) losses over STFT frames
        ``[first, first + frames)``, which need ``(n_fft - hop) / 2`` samples before frame ``first`` (``first >= 2`` at 1024 / 256)."""
        pad = (self.n_fft - self.hop) // 2
        lo, hi = first * self.hop - pad, (first + frames - 1) * self.hop - pad + self.n_fft
        if lo < 0 or hi > fake.shape[1]:
            raise ValueError(f"STFT frames [{first}, {first + frames}) need samples [{lo}, {hi}) of {fake.shape[1]}")
        with torch.autocast(fake.device.type, enabled=False):
            f, r = (torch.stft(x[:, lo:hi].float(), self.n_fft, self.hop, win_length=self.window.shape[0], window=self.window,
                               center=False, return_complex=True) for x in (fake, real))  # (batch, bins, frames)
            mag_f, mag_r = f.abs(), r.abs()
            magnitude = F.l1_loss(mag_f.clamp(min=1e-7).pow(self.compress), mag_r.clamp(min=1e-7).pow(self.compress))
            # phasors of unit length, shorter only in bins under eps, where a phase's gradient would explode
            u, v = f / mag_f.clamp(min=self.eps), r / mag_r.clamp(min=self.eps)
            w = mag_r.detach().pow(self.compress)

            def apart(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
                # |a - b|^2 / 2: 1 - cos of the angle between unit phasors, and 0 wherever a == b
                return ((a - b).abs().square() / 2 * weight).sum() / weight.sum().clamp(min=1e-8)

            phase = apart(u, v, w)
            phase = phase + apart(u[..., 1:] * u[..., :-1].conj(), v[..., 1:] * v[..., :-1].conj(), torch.minimum(w[..., 1:], w[..., :-1]))
            phase = phase + apart(u[:, 1:] * u[:, :-1].conj(), v[:, 1:] * v[:, :-1].conj(), torch.minimum(w[:, 1:], w[:, :-1]))
            return magnitude, phase / 3
