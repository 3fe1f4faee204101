"""Griffin-Lim vocoder: no weights, works with any :class:`MelConfig`.

The log-mel is turned back into a linear magnitude with the pseudo-inverse of
the mel filterbank, then a phase is found with the fast Griffin-Lim algorithm
(Perraudin et al. 2013, momentum 0.99). The STFT is the front-end's own:
reflect-padded by ``(n_fft - hop) / 2`` and not centred, so ``frames`` mel
frames give exactly ``frames * hop`` samples aligned with the original audio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vckit.audio import mel_filterbank
from vckit.config import MelConfig
from vckit.errors import ConfigError
from vckit.models.vocoder.base import Vocoder


class GriffinLim(Vocoder):
    """Log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)``.

    Args:
        mel_config: the front-end that made the log-mels.
        n_iter: Griffin-Lim iterations (quality rises slowly beyond ~32).
        momentum: the "fast Griffin-Lim" momentum; 0 gives plain Griffin-Lim.
        seed: seed of the random initial phase, so output is reproducible.
    """

    def __init__(self, mel_config: MelConfig | None = None, n_iter: int = 32, momentum: float = 0.99, seed: int = 0):
        cfg = mel_config or MelConfig()
        super().__init__(cfg, "griffinlim")
        if n_iter < 1:
            raise ConfigError(f"griffinlim: n_iter must be >= 1, got {n_iter}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"griffinlim: momentum must be in [0, 1), got {momentum}")
        self.n_iter = n_iter
        self.momentum = momentum
        self.seed = seed
        fb = mel_filterbank(cfg).double()  # (n_mels, n_freq)
        self.register_buffer("inv_fb", torch.linalg.pinv(fb).float(), persistent=False)  # (n_freq, n_mels)
        win = torch.hann_window(cfg.win_length)
        left = (cfg.n_fft - cfg.win_length) // 2  # torch.stft centres a short window in n_fft
        win = F.pad(win, (left, cfg.n_fft - cfg.win_length - left))
        self.register_buffer("window", win, persistent=False)  # (n_fft,)

    # -- the front-end's STFT and its least-squares inverse ------------------
    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, samples + n_fft - hop), reflect-padded like the front-end."""
        p = (self.mel_config.n_fft - self.hop_length) // 2
        mode = "reflect" if wav.shape[-1] > p else "constant"
        return F.pad(wav[:, None], (p, p), mode=mode)[:, 0]

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, frames * hop) -> complex (batch, n_freq, frames)."""
        c = self.mel_config
        return torch.stft(
            self._pad(wav), c.n_fft, hop_length=c.hop_length, window=self.window, center=False, return_complex=True
        )

    def _istft(self, spec: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """complex (batch, n_freq, frames) -> (batch, frames * hop), weighted overlap-add."""
        c = self.mel_config
        frames = spec.shape[-1]
        seg = torch.fft.irfft(spec, n=c.n_fft, dim=1) * self.window[:, None]  # (batch, n_fft, frames)
        length = (frames - 1) * c.hop_length + c.n_fft
        wav = F.fold(seg, (1, length), (1, c.n_fft), stride=(1, c.hop_length))[:, 0, 0]
        p = (c.n_fft - c.hop_length) // 2
        return (wav / envelope)[:, p : p + frames * c.hop_length]

    def _envelope(self, frames: int) -> torch.Tensor:
        """Overlap-added squared window ``(padded_samples,)``, floored to avoid 0 at the far edges."""
        c = self.mel_config
        w2 = (self.window**2)[None, :, None].expand(1, c.n_fft, frames)
        length = (frames - 1) * c.hop_length + c.n_fft
        env = F.fold(w2, (1, length), (1, c.n_fft), stride=(1, c.hop_length))[0, 0, 0]
        return env.clamp(min=1e-8)

    def magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, n_mels, frames)`` -> linear magnitude ``(batch, n_freq, frames)`` (>= 0)."""
        lin = torch.matmul(self.inv_fb, torch.exp(mel.float())).clamp(min=0.0)
        return lin.sqrt() if self.mel_config.power == 2.0 else lin

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * hop)``."""
        self.check_mel(mel)
        mag = self.magnitude(mel)
        env = self._envelope(mag.shape[-1])
        gen = torch.Generator().manual_seed(self.seed)
        phase = torch.rand(mag.shape, generator=gen).to(mag.device) * (2 * torch.pi)
        angles = torch.polar(torch.ones_like(mag), phase)
        prev = torch.zeros_like(angles)
        alpha = self.momentum / (1.0 + self.momentum)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(mag * angles, env))
            angles = rebuilt - alpha * prev
            angles = angles / (angles.abs() + 1e-16)
            prev = rebuilt
        return self._istft(mag * angles, env).clamp(-1.0, 1.0)
