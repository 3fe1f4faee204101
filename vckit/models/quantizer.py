"""The VQ bottleneck: an EMA codebook on the content codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vckit.config import VQConfig


class VectorQuantizer(nn.Module):
    """EMA codebook with straight-through gradients and dead-code restarts.

    z: (batch, dim, frames) -> (quantised z, commitment loss, stats dict)
    The codebook follows the mean of the vectors assigned to each code
    (exponential moving average), so it needs no gradient; codes whose usage
    falls below ``dead_code_threshold`` are moved onto random encoder outputs.
    """

    def __init__(self, dim: int, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.codebook_size
        embed = torch.randn(k, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("ema_count", torch.ones(k))
        self.register_buffer("ema_sum", embed.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, d, t = z.shape
        flat = z.permute(0, 2, 1).reshape(-1, d).float()
        embed = self.embed.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.T + embed.pow(2).sum(1)[None]
        idx = dist.argmin(1)
        q = embed[idx]
        onehot = F.one_hot(idx, self.cfg.codebook_size).type(flat.dtype)
        if self.training:
            self._ema_update(flat, onehot)
        commit = F.mse_loss(flat, q.detach())
        q_st = flat + (q - flat).detach()
        probs = onehot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (probs > 0).float().mean()
        out = q_st.reshape(b, t, d).permute(0, 2, 1).type_as(z)
        return out, commit, {"perplexity": perplexity.detach(), "usage": usage.detach(), "indices": idx.reshape(b, t)}

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        count = onehot.sum(0)
        total = onehot.T @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            torch.distributed.all_reduce(total)
        decay = self.cfg.decay
        self.ema_count.mul_(decay).add_(count, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(total, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.cfg.codebook_size * 1e-5) * n
        self.embed.copy_(self.ema_sum / smoothed[:, None])
        # dead-code restart: move rarely used codes onto random current vectors
        dead = self.ema_count < self.cfg.dead_code_threshold * n / self.cfg.codebook_size
        n_dead = int(dead.sum())
        if n_dead > 0:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(pick, 0)
                new = flat[pick].contiguous()
                torch.distributed.broadcast(new, 0)
            else:
                new = flat[pick]
            self.embed[dead] = new
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
