"""The README's headline path, end to end, with nothing swapped out: the shipped
model from ``vckit.load()`` (no arguments), a voice from a reference, the
default HiFi-GAN vocoder; and the README's first command, ``vckit convert``
with its defaults, run as a user runs it. Inputs are the shipped examples
(``examples/``), so this needs nothing beside the repository.
Every other conversion test uses Griffin-Lim or a tiny model.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import numpy as np
import soundfile as sf

from vckit.models.vocoder.hifigan import HiFiGAN

from conftest import REPO_ROOT, vckit_command

EXAMPLES = REPO_ROOT / "examples"
SOURCE = EXAMPLES / "02_f2m_source.wav"  # a woman, 3.3 s
REFERENCE = EXAMPLES / "04_m2m_reference.wav"  # a man, 5.5 s (4.8 s of speech), as the README's Python block
HOP = 256  # the output is as long as the input within one hop


def check_speech(wav: np.ndarray, seconds: float, sr: int) -> None:
    """A finite, audible, unclipped waveform as long as the input."""
    assert wav.ndim == 1 and np.isfinite(wav).all()
    assert abs(len(wav) - seconds * sr) <= HOP
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    assert 0.01 < rms and np.abs(wav).max() <= 1.0, rms


def median_f0(wav: np.ndarray, sr: int) -> float:
    from vckit.pitch import f0_track

    f0 = f0_track(wav, sr)
    return float(np.median(f0[f0 > 0]))


def test_load_voice_convert_with_the_defaults():
    import vckit

    vc = vckit.load()  # the shipped checkpoint and HiFi-GAN, as the README's first Python line
    assert vc.sample_rate == 22050 and isinstance(vc.vocoder, HiFiGAN)
    voice = vc.voice([REFERENCE])
    assert isinstance(voice, vckit.Voice) and voice.embedding.shape == (128,)
    assert voice.f0_median is not None and 70 < voice.f0_median < 180  # a man's register
    assert 1.0 <= voice.seconds <= sf.info(str(REFERENCE)).duration
    x, sr = sf.read(str(SOURCE), dtype="float32")
    x = x[: int(1.5 * sr)]  # a second and a half keeps it quick
    wav = vc.convert(x, target=voice, sr=sr)
    assert wav.dtype == np.float32
    check_speech(wav, len(x) / sr, vc.sample_rate)
    src_f0, out_f0 = median_f0(x, sr), median_f0(wav, vc.sample_rate)
    assert abs(np.log2(out_f0 / voice.f0_median)) < abs(np.log2(out_f0 / src_f0))  # the target's register, not the source's


def first_readme_command() -> list[str]:
    """The ``vckit convert ...`` of the README's first command (install, then convert)."""
    block = re.search(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S).group(1)
    (step,) = [s for s in block.split("&&") if "vckit convert" in s]
    argv = shlex.split(step)
    assert argv[0].endswith("vckit") and argv[1] == "convert", argv
    return argv[1:]


def test_the_readmes_first_command_converts(tmp_path):
    """Run as written from a copy of the repository's root (the examples are linked in), with
    the defaults: the shipped model, HiFi-GAN, 16-bit WAV at 22050 Hz, as long as the source."""
    args = first_readme_command()
    assert not any(a.startswith("--") and a not in ("--ref",) for a in args), f"the first command should use the defaults: {args}"
    (tmp_path / "examples").symlink_to(EXAMPLES)
    proc = subprocess.run([*vckit_command(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / args[args.index("-o") + 1]
    assert proc.stdout.startswith(f"wrote {args[args.index('-o') + 1]}")
    info = sf.info(str(out))
    assert info.samplerate == 22050 and info.channels == 1 and info.subtype == "PCM_16"
    wav, sr = sf.read(str(out), dtype="float32")
    check_speech(wav, sf.info(str(REPO_ROOT / args[1])).duration, sr)
