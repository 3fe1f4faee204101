"""The disentanglement probe (speaker classifiers on frozen features) and VQ codebook statistics."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.errors import VckitError


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean per-class recall over the classes in ``y`` (chance: 1 / classes)."""
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, kind: str = "linear", seed: int = 0, steps: int = 300, hidden: int = 128) -> nn.Module:
    """A speaker classifier on frozen features ``x: (n, dim)``, labels ``y: (n,)``.

    ``kind`` is ``linear`` (multinomial logistic regression) or ``mlp`` (one
    hidden ReLU layer). Features are standardised with the training
    statistics, classes weighted by inverse frequency (so a constant guess
    scores chance), full-batch Adam for ``steps`` steps; deterministic for a seed.
    """
    if kind not in ("linear", "mlp"):
        raise VckitError(f"unknown probe {kind!r} (linear or mlp)")
    gen = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    dim = x.shape[1]
    layers: list[nn.Module] = [nn.Linear(dim, n_classes)] if kind == "linear" else [nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.copy_(torch.empty_like(m.weight).uniform_(-bound, bound, generator=gen))
                m.bias.zero_()
    net = nn.Sequential(*layers)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if kind == "linear" else 3e-3, weight_decay=1e-4)
    xs = (x - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(net(xs), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    class Probe(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return net((z - mean) / std)

    return Probe()


@torch.no_grad()
def probe_scores(train: list[tuple[torch.Tensor, int]], test: list[tuple[torch.Tensor, int]], kind: str = "linear", seed: int = 0) -> dict[str, float]:
    """Held-out speaker accuracy of a probe on per-utterance features.

    Each item is ``(features (frames, dim) or (dim,), speaker index)``: frames
    of an utterance are separate training examples, and an utterance is
    classified by its frames' summed log-probabilities. Returns balanced
    accuracy over test utterances (and over test frames for frame features),
    chance (1 / speakers) and ``chance_95``, the balanced accuracy that 5 % of
    uniformly random guesses over the same test utterances reach.
    """
    if not train or not test:
        raise VckitError("the probe needs training and test utterances")
    n_classes = 1 + max(k for _, k in train + test)

    def stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [f.reshape(-1, f.shape[-1]).float() for f, _ in items]
        labels = [torch.full((len(f),), k, dtype=torch.long) for f, (_, k) in zip(feats, items)]
        return torch.cat(feats), torch.cat(labels)

    x, y = stack(train)
    with torch.enable_grad():
        probe = train_probe(x, y, n_classes, kind, seed)
    utt_pred, frame_pred, frame_true = [], [], []
    for f, k in test:
        logp = F.log_softmax(probe(f.reshape(-1, f.shape[-1]).float()), -1)
        utt_pred.append(int(logp.sum(0).argmax()))
        frame_pred.append(logp.argmax(-1).numpy())
        frame_true.append(np.full(len(logp), k))
    y_utt = np.array([k for _, k in test])
    speakers = np.unique(y_utt)
    # chance is 1 / speakers on average; with few test utterances a guess can score well above it
    rng = np.random.default_rng(seed)
    guesses = [balanced_accuracy(rng.choice(speakers, len(y_utt)), y_utt) for _ in range(1000)]
    out = {"utterance_accuracy": balanced_accuracy(np.array(utt_pred), y_utt), "chance": 1.0 / len(speakers),
           "chance_95": float(np.quantile(guesses, 0.95)), "speakers": len(speakers), "train_utterances": len(train), "test_utterances": len(test)}
    if any(f.dim() == 2 for f, _ in test):
        out["frame_accuracy"] = balanced_accuracy(np.concatenate(frame_pred), np.concatenate(frame_true))
    return out


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage (share of codes used) and perplexity ``exp(H)`` of VQ code indices."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    nz = p[p > 0]
    return {
        "codebook_size": codebook_size,
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).double().mean()),
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "frames": int(counts.sum()),
        "counts": [int(c) for c in counts],
    }
