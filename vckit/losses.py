"""Training losses on normalised log-mels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def classifier_loss(logits: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy of the adversarial speaker classifier."""
    ce = F.cross_entropy(logits.float(), speaker)
    acc = (logits.argmax(-1) == speaker).float().mean()
    return ce, acc
