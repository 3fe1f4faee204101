"""On-device batching of cached features: segments, augmentation, validation windows.

Batches are drawn on the training device: sample a speaker, then a position
uniformly among that speaker's frames, then gather.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from vckit.config import AugmentConfig
from vckit.data.features import QUANT_LO, FeatureStore, from_uint8
from vckit.errors import VckitError


# -- batching --------------------------------------------------------------
class SegmentSampler:
    """Draws training batches on the store's device with no host work per step.

    A speaker is drawn with probability proportional to (its frames) **
    ``power`` (0: uniform over speakers), then a start frame uniformly among
    that speaker's frames. Utterances shorter than the segment are tiled, and
    a mask marks the real frames.
    """

    def __init__(self, store: FeatureStore, utterances: list[dict[str, Any]], segment: int, power: float = 0.3, seed: int = 0):
        if not utterances:
            raise VckitError("no training utterances")
        device = store.mels.device
        self.store, self.segment = store, segment
        speakers = sorted({u["speaker"] for u in utterances})
        self.speakers = speakers
        spk_index = {s: i for i, s in enumerate(speakers)}
        utts = sorted(utterances, key=lambda u: (spk_index[u["speaker"]], u["offset"]))
        self.utt_spk = torch.tensor([spk_index[u["speaker"]] for u in utts], device=device)
        self.utt_off = torch.tensor([u["offset"] for u in utts], device=device)
        self.utt_len = torch.tensor([u["frames"] for u in utts], device=device)
        weight = self.utt_len.clamp(min=1).double()
        self.cum_end = torch.cumsum(weight, 0)  # end of each utterance in the speaker-sorted frame line
        cum_start = self.cum_end - weight
        n_spk = len(speakers)
        spk_frames = torch.zeros(n_spk, dtype=torch.float64, device=device).index_add_(0, self.utt_spk, weight)
        first = torch.zeros(n_spk, dtype=torch.long, device=device)
        first.scatter_reduce_(0, self.utt_spk, torch.arange(len(utts), device=device), reduce="amin", include_self=False)
        self.spk_start = cum_start[first]
        self.spk_frames = spk_frames
        self.cum_start = cum_start
        probs = spk_frames.pow(power)
        self.spk_probs = (probs / probs.sum()).float()
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(seed)

    def _positions(self, spk: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.spk_start[spk] + torch.rand(spk.shape, generator=self.rng, device=spk.device, dtype=torch.float64) * self.spk_frames[spk]
        utt = torch.searchsorted(self.cum_end, r, right=True).clamp(max=len(self.cum_end) - 1)
        n = self.utt_len[utt]
        pos = (r - self.cum_start[utt]).long().clamp(min=0)
        start = torch.minimum(pos, (n - length).clamp(min=0))  # full segment where the utterance allows
        steps = torch.arange(length, device=spk.device)
        rel = start[:, None] + steps[None]
        mask = rel < n[:, None]
        rel = torch.remainder(rel, n[:, None])  # tile utterances shorter than the segment
        idx = self.utt_off[utt][:, None] + rel
        return idx, mask

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Frame indices (B, T) -> float log-mel (B, n_mels, T)."""
        return from_uint8(self.store.mels[idx]).transpose(1, 2)

    def sample(self, batch: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """A batch: ``mel``, ``ref`` (another segment of the same speaker),
        ``mask`` (B, T) of real frames and ``speaker`` ids."""
        length = length or self.segment
        spk = torch.multinomial(self.spk_probs, batch, replacement=True, generator=self.rng)
        idx, mask = self._positions(spk, length)
        ref_idx, _ = self._positions(spk, length)
        return {"mel": self.gather(idx), "ref": self.gather(ref_idx), "mask": mask, "speaker": spk, **self.store.gather_extra(idx)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.rng.set_state(sd["rng"].cpu() if self.rng.device.type == "cpu" else sd["rng"].cpu())


def augment(batch: dict[str, torch.Tensor], cfg: AugmentConfig, rng: torch.Generator, length: int) -> dict[str, torch.Tensor]:
    """Segment-level augmentation on log-mels, on the batch's device.

    ``batch`` holds segments of ``ceil(length * (1 + cfg.speed))`` frames; the
    output has ``length``. A speed change (time stretch) and a shift along the
    mel axis (a pitch and formant change) are applied identically to ``mel``
    and ``ref``, making a new virtual speaker; gain and light noise are drawn
    for each separately.
    """
    mel, ref, mask = batch["mel"], batch["ref"], batch["mask"]
    b, n_mels, src_len = mel.shape
    dev = mel.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand((b,), generator=rng, device=dev)

    on = (torch.rand((b,), generator=rng, device=dev) < cfg.prob).float()
    speed = 1 + on * u(-cfg.speed, cfg.speed)
    shift = on * u(-cfg.pitch_bins, cfg.pitch_bins)
    # sampling grid over (time, mel) in [-1, 1]; output frame j reads input frame j * speed
    tx = (torch.arange(length, device=dev)[None] * speed[:, None]).clamp(max=src_len - 1) / max(src_len - 1, 1) * 2 - 1
    my = (torch.arange(n_mels, device=dev)[None] - shift[:, None]).clamp(0, n_mels - 1) / max(n_mels - 1, 1) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(tx[:, None, :], my[:, :, None]), dim=-1)

    def warp(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        return F.grid_sample(x[:, None], grid, mode=mode, padding_mode="border", align_corners=True)[:, 0]

    def level(x: torch.Tensor) -> torch.Tensor:
        gain = on * u(-cfg.gain_db, cfg.gain_db) * (math.log(10) / 20)
        x = x + gain[:, None, None]
        noisy = (torch.rand((b,), generator=rng, device=dev) < cfg.noise_prob).float() * on
        noise_amp = torch.pow(10.0, u(*cfg.noise_db) / 20) * noisy
        return torch.log(torch.exp(x) + noise_amp[:, None, None]).clamp(min=QUANT_LO)

    m = warp(mask[:, None, :].float().expand(b, n_mels, src_len), "nearest")[:, 0] > 0.5
    out = {**batch, "mel": level(warp(mel)), "ref": level(warp(ref)), "mask": m}
    # per-frame features follow the time stretch (nearest frame); a mel-axis shift
    # does not move them, so models with an F0 path train with pitch_bins 0
    src = (torch.arange(length, device=dev)[None] * speed[:, None]).round().long().clamp(max=src_len - 1)  # (B, length)
    for k in ("f0", "posteriors_idx", "posteriors_p"):
        if k in batch:
            v = batch[k]
            out[k] = torch.gather(v, 1, src if v.dim() == 2 else src[..., None].expand(-1, -1, v.shape[-1]))
    if "phonetic" in batch:
        v = batch["phonetic"]
        out["phonetic"] = torch.gather(v, 2, src[:, None, :].expand(-1, v.shape[1], -1))
    return out


def mel_shift(mel: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Shift log-mels (B, n_mels, T) up the mel axis by ``bins`` (B,) (fractional,
    negative: down), repeating the edge bins: a pitch and formant change."""
    b, n_mels, t = mel.shape
    pos = (torch.arange(n_mels, device=mel.device, dtype=mel.dtype)[None] - bins[:, None].to(mel.dtype)).clamp(0, n_mels - 1)
    lo = pos.floor().long().clamp(max=n_mels - 2) if n_mels > 1 else pos.floor().long()
    frac = (pos - lo.to(mel.dtype))[:, :, None]
    lo_v = torch.gather(mel, 1, lo[:, :, None].expand(b, n_mels, t))
    hi_v = torch.gather(mel, 1, (lo + 1).clamp(max=n_mels - 1)[:, :, None].expand(b, n_mels, t))
    return lo_v + frac * (hi_v - lo_v)


def valid_batches(store: FeatureStore, utterances: list[dict[str, Any]], segment: int, batch: int, max_items: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """Fixed validation batches: the middle segment of each utterance, with
    the reference taken from the speaker's next utterance (or its own start)."""
    by_spk: dict[str, list[dict[str, Any]]] = {}
    for u in utterances:
        by_spk.setdefault(u["speaker"], []).append(u)
    items = []
    for spk, us in sorted(by_spk.items()):
        for i, u in enumerate(us):
            r = us[(i + 1) % len(us)]
            items.append((u, r))
    items = items[:max_items]
    dev = store.mels.device

    def window(u: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        n = u["frames"]
        start = max(0, (n - segment) // 2)
        rel = torch.arange(segment, device=dev) + start
        mask = rel < n
        rel = torch.remainder(rel, n)
        return u["offset"] + rel, mask

    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        idx, masks = zip(*[window(u) for u, _ in chunk])
        ridx = [window(r)[0] for _, r in chunk]
        yield {
            "mel": from_uint8(store.mels[torch.stack(idx)]).transpose(1, 2),
            "ref": from_uint8(store.mels[torch.stack(ridx)]).transpose(1, 2),
            "mask": torch.stack(masks),
            **store.gather_extra(torch.stack(idx)),
        }
