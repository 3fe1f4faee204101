"""The logic of the Gradio demo (``python demo.py``), as testable functions.

:class:`DemoService` holds the loaded models and does one conversion per call
on its own temporary folder; :mod:`vckit.demo.page` turns its results and
errors into the page. Nothing here imports Gradio.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vckit.demo.examples import EXAMPLES_DIR, example_voices, list_examples
from vckit.demo.mel_image import render_mels
from vckit.errors import VckitError
from vckit.shipped import LIVE_VOCODER, shipped_dir

log = logging.getLogger(__name__)

JUDGE_DIR = shipped_dir("speaker_verification")
DEFAULT_MAX_SECONDS = 60.0
VOCODERS = ("hifigan", "fast", "griffinlim")  # the fast one is distilled from HiFi-GAN: checkpoints/vocoder_fast
PITCH_MODES = ("none", "match F0", "manual semitones")
MAX_SEMITONES = 24.0
REFERENCE_CHOICE = "reference clip (upload or record)"
EXAMPLE_PREFIX = "example voice: "
ENROLLED_PREFIX = "enrolled: "
REQUEST_MAX_AGE_S = 3600.0  # request folders older than this are removed by later requests
STREAM_DIR = shipped_dir("stream")
NO_STREAM_MODEL = "live conversion needs the streaming model (checkpoints/stream), which this installation lacks: start the demo with --stream-checkpoint PATH to use another causal model"

Progress = Callable[..., Any]


class DemoError(VckitError):
    """A request the demo cannot serve (no input, too long, unknown voice)."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^/\s'\"`:,;()]+){2,}")


def hide_paths(message: str, paths: tuple[Any, ...] = ()) -> str:
    """``message`` with the server's folders taken out: each file keeps its base name only."""
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and str(p):
            message = message.replace(str(Path(p).resolve()), Path(p).name).replace(str(p), Path(p).name)
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0)).name, message)


# -- the service --------------------------------------------------------------------

@dataclass
class Result:
    """What one conversion gives the page."""

    audio: Path  # 16-bit WAV at the converter's sample rate
    mels: Path  # PNG: source, reference and result side by side
    seconds: float  # length of the converted audio
    similarity: dict[str, float | None]  # judge cosine of the result "to_reference" and "to_source"
    pitch_shift: float  # semitones the source was shifted: the model's own register move plus what was asked for
    summary: str  # Markdown for the page
    elapsed: float = 0.0
    warnings: tuple[str, ...] = ()  # about the reference audio (little speech, noisy, short)
    register_shift: float = 0.0  # of pitch_shift, what a model with an F0 path moved by itself (to the target's register)


@dataclass
class _Target:
    voice: Any  # vckit.Voice: the embedding and F0 median that convert takes, the warnings about its references
    name: str
    audio: np.ndarray | None  # all reference clips at the model rate, one after another: for the picture and the judge
    clips: int = 1  # how many reference clips make the voice
    speech_seconds: float | None = None  # speech in them (None: not measured, e.g. an enrolled voice)


@dataclass
class DemoService:
    """Loaded models plus the conversion that the page's button runs.

    Converters are loaded once per vocoder and shared by all requests (their
    forward passes keep no state); each request writes to a folder of its own.
    """

    checkpoint: str | None = None
    device: str = "auto"
    default_vocoder: str = "hifigan"
    max_seconds: float = DEFAULT_MAX_SECONDS
    judge_dir: Path = JUDGE_DIR
    bank: Path | None = None
    examples_dir: Path = EXAMPLES_DIR
    workdir: Path | None = None
    stream_checkpoint: str | os.PathLike | None = None  # the causal model of the live tab (default: checkpoints/stream)
    _converters: dict[str, Any] = field(default_factory=dict, repr=False)
    _judge: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.default_vocoder not in VOCODERS:
            raise DemoError(f"unknown vocoder {self.default_vocoder!r} (choose from {', '.join(VOCODERS)})")
        if not self.max_seconds > 0:
            raise DemoError(f"--max-seconds must be positive, got {self.max_seconds}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vckit-demo-"))
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.examples = list_examples(self.examples_dir)
        self.voices = example_voices(self.examples)  # one per reference speaker, with all its clips

    # -- models ---------------------------------------------------------------
    def converter(self, vocoder: str | None = None) -> Any:
        """The :class:`vckit.Converter` for ``vocoder``, loaded on first use."""
        vocoder = vocoder or self.default_vocoder
        if vocoder not in VOCODERS:
            raise DemoError(f"unknown vocoder {vocoder!r} (choose from {', '.join(VOCODERS)})")
        with self._lock:
            if vocoder not in self._converters:
                import vckit

                self._converters[vocoder] = vckit.load(self.checkpoint, device=self.device, vocoder=vocoder)
            return self._converters[vocoder]

    def stream_path(self) -> Path:
        """The streaming model's folder; DemoError (with what to do) when there is none."""
        path = Path(self.stream_checkpoint) if self.stream_checkpoint else STREAM_DIR
        if not path.exists():
            raise DemoError(NO_STREAM_MODEL if not self.stream_checkpoint else f"no streaming model at {path}")
        return path

    def stream_converter(self) -> Any:
        """The causal :class:`vckit.Converter` that the live tab streams through, loaded on first use.

        Raises:
            DemoError: when there is no streaming model (``checkpoints/stream`` absent, no ``stream_checkpoint``).
        """
        path = self.stream_path()
        with self._lock:
            if "stream" not in self._converters:
                import vckit

                # HiFi-GAN cannot keep up live on two cores: the live tab streams through the live vocoder instead,
                # as vckit stream does
                vocoder = LIVE_VOCODER if self.default_vocoder == "hifigan" else self.default_vocoder
                self._converters["stream"] = vckit.load(path, device=self.device, vocoder=vocoder)
            return self._converters["stream"]

    def judge(self) -> tuple[Any, dict[str, Any]]:
        """The speaker-verification model and its metadata (threshold, EER)."""
        with self._lock:
            if self._judge is None:
                from vckit.models.verifier import load_verifier

                self._judge = load_verifier(self.judge_dir)
            return self._judge

    def warm_up(self) -> None:
        """Load the default converter, the judge and (when there is one) the streaming model now rather than on the first request."""
        self.converter()
        self.judge()
        try:
            self.stream_converter()
        except DemoError as e:
            log.info("the live tab is off: %s", e)

    # -- targets ----------------------------------------------------------------
    def bank_dir(self) -> Path:
        from vckit.speakers import default_bank

        return Path(self.bank) if self.bank else default_bank()

    def example_voice(self, choice: str) -> tuple[list[str], str]:
        """The reference clips and the speaker's name of an example-voice choice."""
        label = choice[len(EXAMPLE_PREFIX) :]
        ex = next((v for v in self.voices if v.label == label), None)
        if ex is None:
            raise DemoError(f"unknown example voice {label!r}")
        return [str(r) for r in ex.references], label.split(" (")[0]

    def target_choices(self) -> list[str]:
        """What the target-voice menu offers: a reference clip, the example voices, the enrolled voices."""
        from vckit.speakers import list_profiles

        out = [REFERENCE_CHOICE] + [f"{EXAMPLE_PREFIX}{v.label}" for v in self.voices]
        return out + [f"{ENROLLED_PREFIX}{p.name}" for p in list_profiles(self.bank_dir())]

    def _target(self, choice: str | None, reference: str | None, vc: Any) -> _Target:
        rate = vc.config.mel.sample_rate
        choice = choice or REFERENCE_CHOICE
        if choice.startswith(ENROLLED_PREFIX):
            from vckit.speakers import load_profile

            name = choice[len(ENROLLED_PREFIX) :]
            voice = vc.enrolled(name, self.bank_dir())  # as the API reads it: remade from its clips for another model, else refused naming both
            prof = load_profile(self.bank_dir(), name)
            clips = []  # the enrolment's references, where still readable: for the picture and the judge
            for ref in prof.meta.get("references", []):
                try:
                    clips.append(self._load(ref, "reference", rate, trim=True))
                except VckitError:
                    log.info("enrolled reference %s not usable for the picture", ref)
            return _Target(voice, name, _joined(clips, rate), clips=len(clips))
        if choice.startswith(EXAMPLE_PREFIX):
            references, name = self.example_voice(choice)
        elif choice == REFERENCE_CHOICE:
            if not reference:
                raise DemoError("no reference voice: upload or record a reference clip, or pick a voice from the menu")
            references, name = [reference], _stem(reference)
        else:
            raise DemoError(f"unknown target voice {choice!r}")
        clips = [self._load(r, "reference", rate, trim=True) for r in references]
        voice = vc.voice(clips, sr=rate)  # the embedding, the F0 median and the speech checks, from one decode
        return _Target(voice, name, _joined(clips, rate), clips=len(clips), speech_seconds=voice.speech_seconds)

    def _load(self, path: str | os.PathLike, what: str, rate: int, *, trim: bool) -> np.ndarray:
        """Check the length without decoding, then read: clear errors for long, unreadable or silent audio."""
        import soundfile as sf

        from vckit.audio import load_audio

        p = Path(path)
        if p.is_file() and p.stat().st_size > 0:
            try:
                seconds = sf.info(str(p)).duration
            except Exception:
                seconds = None  # load_audio says why it cannot read the file
            if seconds is not None and seconds > self.max_seconds:
                raise DemoError(f"the {what} is {seconds:.1f} s long; this demo takes at most {self.max_seconds:g} s: use a shorter clip")
        return load_audio(p, rate, trim=trim, what=what)

    # -- one request ---------------------------------------------------------------
    def convert(
        self,
        source: str | os.PathLike | None,
        target: str | None = REFERENCE_CHOICE,
        reference: str | os.PathLike | None = None,
        vocoder: str | None = None,
        pitch_mode: str = "none",
        semitones: float = 0.0,
        progress: Progress | None = None,
    ) -> Result:
        """Convert ``source`` to the chosen voice; write the WAV and the picture to a fresh folder.

        Raises:
            VckitError: with a sentence for the visitor (no input, too long,
                unreadable, silent, too short, unknown voice).
        """
        t0 = time.perf_counter()
        step = progress or (lambda *a, **k: None)
        if not source:
            raise DemoError("no source: upload or record the speech to convert")
        if pitch_mode not in PITCH_MODES:
            raise DemoError(f"unknown pitch handling {pitch_mode!r} (choose from {', '.join(PITCH_MODES)})")
        step(0.05, desc="loading the model")
        vc = self.converter(vocoder)
        rate = vc.config.mel.sample_rate
        step(0.15, desc="reading the audio")
        src = self._load(source, "source", rate, trim=False)
        tgt = self._target(target, reference, vc)
        shift = 0.0
        if pitch_mode == "manual semitones":
            shift = float(semitones or 0.0)
            if not -MAX_SEMITONES <= shift <= MAX_SEMITONES:
                raise DemoError(f"pitch shift must be between -{MAX_SEMITONES:g} and {MAX_SEMITONES:g} semitones, got {shift:g}")
        elif pitch_mode == "match F0" and not vc.model.needs_f0:
            step(0.25, desc="matching the pitch range")
            shift = vc.pitch_offset(src, tgt.voice)
        step(0.35, desc="converting")
        wav = vc.convert(src, tgt.voice, sr=rate, pitch_shift=shift)
        register = 0.0
        if vc.model.needs_f0:  # the F0 path always moves the source's contour to the target's register: show by how much
            register = vc.pitch_offset(src, tgt.voice)
            shift += register
        self._prune()
        out_dir = Path(tempfile.mkdtemp(prefix="req-", dir=self.workdir))
        audio = vc.save(out_dir / f"vckit_{_safe(_stem(source))}_to_{_safe(tgt.name)}.wav", wav)
        step(0.8, desc="scoring speaker similarity")
        sims = self.similarity(wav, vc.sample_rate, src, tgt.audio, rate)
        step(0.9, desc="drawing the spectrograms")
        mels = self._picture(vc, src, tgt, wav, out_dir / "mels.png")
        seconds = len(wav) / vc.sample_rate
        res = Result(audio, mels, seconds, sims, shift, "", time.perf_counter() - t0, tgt.voice.warnings, register_shift=register)
        res.summary = self.summary(res, tgt, vocoder or self.default_vocoder)
        step(1.0, desc="done")
        return res

    def similarity(self, wav: np.ndarray, sr: int, source: np.ndarray, reference: np.ndarray | None, rate: int) -> dict[str, float | None]:
        """Judge cosine of ``wav`` to the reference (None without reference audio) and to the source."""
        import torch

        from vckit.audio import load_audio, log_mel

        model, _ = self.judge()
        mel_cfg = model.cfg.mel

        def embed(x: np.ndarray | None, x_sr: int) -> torch.Tensor | None:
            if x is None:
                return None
            try:
                y = load_audio(x, mel_cfg.sample_rate, x_sr)  # trimmed and normalised like any judged clip
            except VckitError:  # e.g. a silent result: no score rather than no result
                return None
            with torch.inference_mode():
                return model(log_mel(y, mel_cfg)[None])[0]

        e, e_src, e_ref = embed(wav, sr), embed(source, rate), embed(reference, rate)

        def cos(a: torch.Tensor | None) -> float | None:
            return None if e is None or a is None else float(torch.dot(e, a))

        return {"to_reference": cos(e_ref), "to_source": cos(e_src)}

    def _picture(self, vc: Any, src: np.ndarray, tgt: _Target, wav: np.ndarray, path: Path) -> Path:
        from vckit.audio import load_audio, log_mel, mel_filterbank

        cfg, rate = vc.config.mel, vc.config.mel.sample_rate
        out = load_audio(wav, rate, vc.sample_rate, trim=False, normalize=False)
        panels = [("source", src), ("reference", tgt.audio), ("result", out)]
        panels = [(t, log_mel(x, cfg).cpu().numpy(), len(x) / rate) for t, x in panels if x is not None]
        freqs = (mel_filterbank(cfg).argmax(1) * rate / cfg.n_fft).numpy()  # each mel bin's centre, in Hz
        return render_mels(panels, path, freqs=np.maximum.accumulate(freqs))

    def summary(self, res: Result, tgt: _Target, vocoder: str) -> str:
        """Markdown: one verdict (closer to the target than to the source?), the judge's numbers, the reference warnings."""
        _, meta = self.judge()
        thr, eer = float(meta.get("threshold", 0.3)), float(meta.get("eer", float("nan")))
        to_ref, to_src = res.similarity["to_reference"], res.similarity["to_source"]
        if to_ref is None or to_src is None:
            verdict = "n/a (no reference or source audio to compare with)"
        else:
            verdict = "yes" if to_ref > to_src else "no"

        def num(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        shift = _pitch_words(res.pitch_shift, res.register_shift)
        clips = f"{tgt.clips} clips" if tgt.clips != 1 else "1 clip"
        speech = f", {tgt.speech_seconds:.1f} s of speech" if tgt.speech_seconds is not None else ""
        lines = [
            f"**Closer to the target than to the source: {verdict}**",
            "",
            f"Converted {res.seconds:.1f} s to the voice of *{tgt.name}* ({clips}{speech}) with {vocoder} in {res.elapsed:.1f} s; pitch: {shift}.",
        ]
        lines += [""] + [f"- warning: {w}" for w in res.warnings] if res.warnings else []
        return "\n".join(
            lines
            + [
                "",
                f"- similarity of the result to the **reference**: {num(to_ref)}",
                f"- similarity of the result to the **source**: {num(to_src)}",
                "",
                f"These are cosine similarities (-1 to 1) between voice embeddings of an independent speaker-verification model "
                f"(`checkpoints/speaker_verification`, not part of the converter). From {thr:.2f} up it takes two clips for the same speaker "
                f"(wrong on {eer:.0%} of held-out trials), so both can pass at once; what tells a conversion is which of the two is higher.",
            ]
        )

    def close(self) -> None:
        """Remove this service's request folders."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _prune(self) -> None:
        """Remove request folders older than an hour (Gradio keeps its own copy of served files)."""
        now = time.time()
        for d in self.workdir.glob("req-*"):
            try:
                if now - d.stat().st_mtime > REQUEST_MAX_AGE_S:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                continue


def _stem(path: str | os.PathLike) -> str:
    return Path(path).stem or "audio"


def _joined(clips: list[np.ndarray], rate: int) -> np.ndarray | None:
    """Clips one after another with 0.2 s of silence between (None when there are none)."""
    if not clips:
        return None
    gap = np.zeros(int(0.2 * rate), np.float32)
    return np.concatenate([x for c in clips for x in (gap, c)][1:])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:40] or "audio"


def _pitch_words(total: float, register: float) -> str:
    """How the pitch was moved, in words: the model's own move to the target's register, and what was asked for."""
    asked = total - register
    if not register:
        return f"shifted {asked:+.1f} semitones" if asked else "not shifted"
    own = f"moved {register:+.1f} semitones to the target's register by the model itself (it follows the target's F0)"
    return own + (f", then {asked:+.1f} semitones as asked" if abs(asked) >= 0.05 else "")
