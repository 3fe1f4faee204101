"""Pictures of log-mel spectrograms as PNG, without a plotting library if need be.

:func:`render_mels` draws several spectrograms side by side on one colour
scale: with matplotlib when it is installed, else with numpy (and Pillow for
the titles, if present). :func:`write_png` encodes an RGB array with zlib only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vckit.files import write_file_atomically

# viridis at nine evenly spaced points, for the plain numpy rendering
_VIRIDIS = np.array(
    [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]],
    dtype=np.float64,
)


def _colorize(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] ``(h, w)`` -> RGB ``(h, w, 3)`` uint8 (viridis)."""
    pos = np.clip(x, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    return (_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).round().astype(np.uint8)


def _color_range(mels: Sequence[np.ndarray], dynamic_range: float) -> tuple[float, float]:
    vmax = max(float(m.max()) for m in mels)
    vmin = max(min(float(m.min()) for m in mels), vmax - dynamic_range)
    return vmin, vmax


def render_mels(
    panels: Sequence[tuple[str, np.ndarray, float]],
    path: str | os.PathLike,
    dynamic_range: float = 9.0,
    freqs: Sequence[float] | None = None,
) -> Path:
    """Side-by-side log-mel pictures, one colour scale for all, written as PNG.

    Args:
        panels: ``(title, log_mel (n_mels, frames), seconds)`` per picture.
        path: the PNG to write.
        dynamic_range: natural-log units below the loudest value still coloured
            (9 is about 78 dB).
        freqs: the centre frequency (Hz) of each mel bin ``(n_mels,)``: the
            frequency axis is then labelled in Hz, else in mel bins.

    Uses matplotlib when it is installed, else a plain numpy rendering
    (titles drawn with Pillow, which Gradio depends on, when available).
    """
    path = Path(path)
    mels = [np.asarray(m, dtype=np.float32) for _, m, _ in panels]
    vmin, vmax = _color_range(mels, dynamic_range)
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot state, safe across threads
    except ImportError:
        Figure = None
    if Figure is not None:
        fig = Figure(figsize=(4.2 * len(panels), 3.0), dpi=100, layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, _, seconds), m in zip(axes, panels, mels):
            im = ax.imshow(m, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis", extent=(0, seconds, 0, m.shape[0]), interpolation="nearest")
            ax.set_title(title)
            ax.set_xlabel("time (s)")
            if freqs is not None:
                hz = [f for f in (125, 250, 500, 1000, 2000, 4000, 8000) if freqs[0] <= f <= freqs[-1]]
                ax.set_yticks(np.interp(hz, freqs, np.arange(len(freqs)) + 0.5), [f"{f:g}" if f < 1000 else f"{f // 1000:g}k" for f in hz])
        axes[0].set_ylabel("frequency (Hz)" if freqs is not None else "mel bin")
        fig.colorbar(im, ax=list(axes), label="log magnitude", shrink=0.9)
        fig.savefig(path, format="png")
        return path
    width, height, gap, head = 360, 160, 10, 22
    canvas = np.full((height + head, len(panels) * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for i, m in enumerate(mels):
        rows = np.linspace(m.shape[0] - 1, 0, height).round().astype(int)  # low frequencies at the bottom
        cols = np.linspace(0, m.shape[1] - 1, width).round().astype(int)
        x0 = i * (width + gap)
        canvas[head:, x0 : x0 + width] = _colorize((m[rows][:, cols] - vmin) / max(vmax - vmin, 1e-6))
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # no titles then
        return write_png(path, canvas)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=15)  # Pillow >= 10.1
    except TypeError:  # pragma: no cover
        font = ImageFont.load_default()
    for i, (title, _, seconds) in enumerate(panels):
        draw.text((i * (width + gap) + 4, 3), f"{title} ({seconds:.1f} s)", fill=(0, 0, 0), font=font)
    img.save(path, format="PNG")
    return path


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write ``rgb`` ``(height, width, 3)`` uint8 as PNG (zlib only)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    write_file_atomically(path, png, overwrite=True)
    return path
