"""The logic of the Gradio demo (``python demo.py``), as testable functions.

:class:`DemoService` holds the loaded models and does one conversion per call
on its own temporary folder; :func:`handle_convert` turns its errors into a
message for the page; :func:`build_app` lays out the Gradio page. Gradio is
imported inside :func:`build_app` only, so ``import vckit`` stays light and
the rest of this module works without it.
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

from vckit.demo.examples import EXAMPLES_DIR, REPO_ROOT, list_examples
from vckit.demo.mel_image import render_mels
from vckit.errors import VckitError

log = logging.getLogger(__name__)

JUDGE_DIR = REPO_ROOT / "checkpoints" / "speaker_verification"
DEFAULT_MAX_SECONDS = 60.0
VOCODERS = ("hifigan", "griffinlim")
PITCH_MODES = ("none", "match F0", "manual semitones")
MAX_SEMITONES = 24.0
REFERENCE_CHOICE = "reference clip (upload or record)"
EXAMPLE_PREFIX = "example voice: "
ENROLLED_PREFIX = "enrolled: "
REQUEST_MAX_AGE_S = 3600.0  # request folders older than this are removed by later requests

Progress = Callable[..., Any]


class DemoError(VckitError):
    """A request the demo cannot serve (no input, too long, unknown voice)."""


# -- the service --------------------------------------------------------------------
@dataclass
class Result:
    """What one conversion gives the page."""

    audio: Path  # 16-bit WAV at the converter's sample rate
    mels: Path  # PNG: source, reference and result side by side
    seconds: float  # length of the converted audio
    similarity: dict[str, float | None]  # judge cosine of the result "to_reference" and "to_source"
    pitch_shift: float  # semitones the source was shifted
    summary: str  # Markdown for the page
    elapsed: float = 0.0


@dataclass
class _Target:
    embedding: Any  # torch.Tensor (dim,)
    name: str
    audio: np.ndarray | None  # reference audio at the model rate, for the picture and the judge
    f0: float | None
    refs: Any = None  # what reference_f0 can take (arrays), None for enrolled voices


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

    def judge(self) -> tuple[Any, dict[str, Any]]:
        """The speaker-verification model and its metadata (threshold, EER)."""
        with self._lock:
            if self._judge is None:
                from vckit.models.verifier import load_verifier

                self._judge = load_verifier(self.judge_dir)
            return self._judge

    def warm_up(self) -> None:
        """Load the default converter and the judge now rather than on the first request."""
        self.converter()
        self.judge()

    # -- targets ----------------------------------------------------------------
    def bank_dir(self) -> Path:
        from vckit.speakers import default_bank

        return Path(self.bank) if self.bank else default_bank()

    def target_choices(self) -> list[str]:
        """What the target-voice menu offers: a reference clip, the example voices, the enrolled voices."""
        from vckit.speakers import list_profiles

        out = [REFERENCE_CHOICE] + [f"{EXAMPLE_PREFIX}{e.label}" for e in self.examples]
        return out + [f"{ENROLLED_PREFIX}{p.name}" for p in list_profiles(self.bank_dir())]

    def _target(self, choice: str | None, reference: str | None, vc: Any) -> _Target:
        rate = vc.config.mel.sample_rate
        choice = choice or REFERENCE_CHOICE
        if choice.startswith(ENROLLED_PREFIX):
            from vckit.speakers import load_profile

            name = choice[len(ENROLLED_PREFIX) :]
            prof = load_profile(self.bank_dir(), name)
            if prof.model_id and vc.model_id and prof.model_id != vc.model_id:
                raise DemoError(f"speaker {name!r} was enrolled with another model: enroll it again with this one")
            audio = None  # the enrolment's first reference, where it is still readable: for the picture and the judge
            for ref in prof.meta.get("references", [])[:1]:
                try:
                    audio = self._load(ref, "reference", rate, trim=True)
                except VckitError:
                    log.info("enrolled reference %s not usable for the picture", ref)
            return _Target(prof.embedding, name, audio, prof.f0_median)
        if choice.startswith(EXAMPLE_PREFIX):
            label = choice[len(EXAMPLE_PREFIX) :]
            ex = next((e for e in self.examples if e.label == label), None)
            if ex is None:
                raise DemoError(f"unknown example voice {label!r}")
            reference, name = str(ex.reference), f"example {ex.name}"
        elif choice == REFERENCE_CHOICE:
            if not reference:
                raise DemoError("no reference voice: upload or record a reference clip, or pick a voice from the menu")
            name = _stem(reference)
        else:
            raise DemoError(f"unknown target voice {choice!r}")
        audio = self._load(reference, "reference", rate, trim=True)
        voice = vc.voice(audio, sr=rate)  # the embedding and the F0 median, from one decode
        return _Target(voice.embedding, name, audio, voice.f0_median, refs=audio)

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
            shift = vc.pitch_offset(src, tgt.refs if tgt.refs is not None else tgt.embedding, sr=rate, target_f0=tgt.f0)
        step(0.35, desc="converting")
        wav = vc.convert(src, tgt.embedding, sr=rate, pitch_shift=shift, target_f0=tgt.f0)
        if vc.model.needs_f0:  # the F0 path always moves the source's contour to the target's register: show by how much
            shift += vc.pitch_offset(src, tgt.embedding, sr=rate, target_f0=tgt.f0)
        self._prune()
        out_dir = Path(tempfile.mkdtemp(prefix="req-", dir=self.workdir))
        audio = vc.save(out_dir / f"vckit_{_safe(_stem(source))}_to_{_safe(tgt.name)}.wav", wav)
        step(0.8, desc="scoring speaker similarity")
        sims = self.similarity(wav, vc.sample_rate, src, tgt.audio, rate)
        step(0.9, desc="drawing the spectrograms")
        mels = self._picture(vc, src, tgt, wav, out_dir / "mels.png")
        seconds = len(wav) / vc.sample_rate
        res = Result(audio, mels, seconds, sims, shift, "", time.perf_counter() - t0)
        res.summary = self.summary(res, tgt.name, vocoder or self.default_vocoder)
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
        from vckit.audio import load_audio, log_mel

        cfg, rate = vc.config.mel, vc.config.mel.sample_rate
        out = load_audio(wav, rate, vc.sample_rate, trim=False, normalize=False)
        panels = [("source", src), ("reference", tgt.audio), ("result", out)]
        panels = [(t, log_mel(x, cfg).cpu().numpy(), len(x) / rate) for t, x in panels if x is not None]
        return render_mels(panels, path)

    def summary(self, res: Result, target_name: str, vocoder: str) -> str:
        """Markdown: the judge's numbers and what they mean."""
        _, meta = self.judge()
        thr, eer = float(meta.get("threshold", 0.3)), float(meta.get("eer", float("nan")))

        def verdict(x: float | None) -> str:
            if x is None:
                return "n/a (no audio to compare with)"
            return f"**{x:.2f}** ({'same speaker' if x >= thr else 'different speaker'} by the judge)"

        shift = f"{res.pitch_shift:+.1f} semitones" if res.pitch_shift else "none"
        return "\n".join(
            [
                f"**Converted** {res.seconds:.1f} s to the voice of *{target_name}* with {vocoder} in {res.elapsed:.1f} s; pitch shift: {shift}.",
                "",
                f"- similarity of the result to the **reference**: {verdict(res.similarity['to_reference'])}",
                f"- similarity of the result to the **source**: {verdict(res.similarity['to_source'])}",
                "",
                f"These are cosine similarities (-1 to 1) between voice embeddings of an independent speaker-verification model "
                f"(`checkpoints/speaker_verification`, not part of the converter). From {thr:.2f} up it takes two clips for the same speaker; "
                f"at that threshold it is wrong on {eer:.0%} of held-out trials. A good conversion is close to the reference and far from the source.",
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:40] or "audio"


# -- the page ---------------------------------------------------------------------------
def handle_convert(service: DemoService, *args: Any, progress: Progress | None = None, warn: Callable[[str], Any] | None = None) -> tuple[str | None, str | None, str]:
    """The convert button: ``(audio path, picture path, Markdown)``; never raises.

    A request that cannot be served gives ``(None, None, message)`` and the
    message is also passed to ``warn`` (``gr.Warning`` on the page).
    """
    try:
        res = service.convert(*args, progress=progress)
    except VckitError as e:
        msg = str(e)
    except Exception:  # a bug: keep the traceback in the server log, not on the page
        log.exception("conversion failed")
        msg = "internal error while converting (the server log has the details)"
    else:
        return str(res.audio), str(res.mels), res.summary
    if warn is not None:
        warn(msg)
    return None, None, f"**Could not convert:** {msg}"


INTRO = """# vckit voice conversion
Speech from the **source** comes out in the voice of the **target**. Upload or record a source, then
upload or record a reference clip of the target voice (at least 1 s of speech), or pick an example or
enrolled voice. Or click one of the examples below. Runs the shipped model (`checkpoints/default`) offline."""


def build_app(service: DemoService) -> Any:
    """The Gradio Blocks page over ``service`` (not yet queued or launched)."""
    import gradio as gr

    choices = service.target_choices()
    with gr.Blocks(title="vckit voice conversion", delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Source speech", elem_id="source-audio")
            with gr.Column():
                target = gr.Dropdown(choices, value=REFERENCE_CHOICE, label="Target voice", elem_id="target-choice")
                reference = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Reference clip of the target voice", elem_id="reference-audio")
        with gr.Accordion("Options", open=True):
            with gr.Row():
                vocoder = gr.Radio(list(VOCODERS), value=service.default_vocoder, label="Vocoder", info="hifigan: neural, natural; griffinlim: no neural vocoder, faster, buzzy")
                pitch = gr.Radio(list(PITCH_MODES), value="none", label="Pitch handling", info="match F0: shift the source to the target's median F0 first")
                semitones = gr.Slider(-12, 12, value=0, step=0.5, label="Manual shift (semitones)", interactive=False)
        button = gr.Button("Convert", variant="primary", elem_id="convert-btn")
        with gr.Row():
            result = gr.Audio(type="filepath", format="wav", label="Converted speech", interactive=False, buttons=["download"], elem_id="result-audio")
            report = gr.Markdown("The result and its speaker similarity will appear here.", elem_id="report")
        mels = gr.Image(type="filepath", label="Log-mel spectrograms", show_label=False, interactive=False, elem_id="mels")
        inputs = [source, target, reference, vocoder, pitch, semitones]
        outputs = [result, mels, report]

        def on_convert(src, tgt, ref, voc, pitch_mode, semis, progress=gr.Progress()):
            return handle_convert(service, src, tgt, ref, voc, pitch_mode, semis, progress=progress, warn=gr.Warning)

        button.click(on_convert, inputs, outputs, concurrency_id="convert")
        target.change(lambda c: gr.update(visible=c == REFERENCE_CHOICE), target, reference, queue=False)
        app.load(lambda: gr.update(choices=service.target_choices()), None, target, queue=False)  # voices enrolled since start
        pitch.change(lambda m: gr.update(interactive=m == "manual semitones"), pitch, semitones, queue=False)
        if service.examples:
            ex = gr.Examples(
                [[str(e.source), REFERENCE_CHOICE, str(e.reference)] for e in service.examples],
                [source, target, reference],
                example_labels=[e.label for e in service.examples],
                label="Examples (one click converts)",
            )
            ex.load_input_event.then(on_convert, inputs, outputs, concurrency_id="convert")
    return app


def launch_kwargs(service: DemoService) -> dict[str, Any]:
    """Settings for ``app.launch``: serve the example files, cap upload size."""
    paths = sorted({str(p.parent) for e in service.examples for p in (e.source, e.reference)})
    # a 192 kHz stereo float WAV is 1.5 MB/s; allow that for the longest accepted clip
    return {"allowed_paths": paths, "max_file_size": f"{max(10, int(service.max_seconds * 1.6))}mb"}
