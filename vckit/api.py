"""The public API: load a model, make a voice, convert.

    >>> import vckit
    >>> vc = vckit.load()                                 # the shipped model, offline
    >>> voice = vc.voice(["ref1.wav", "ref2.wav"])        # embedding + F0 statistics, from several clips
    >>> wav = vc.convert("source.wav", target=voice)      # float32 at vc.sample_rate
    >>> vc.save("out.wav", wav)

Each step hands on one explicit object: :meth:`Converter.voice` (or
:meth:`Converter.enrolled`) makes a :class:`Voice`, :meth:`Converter.convert`
takes it. Paths or arrays go in (arrays with ``sr=``), float32 arrays come out
at ``vc.sample_rate``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch

from vckit.activity import silence_gate
from vckit.audio import AudioInput, load_audio, log_mel, output_format, write_audio
from vckit.checkpoint import load_checkpoint, recorded_sha256
from vckit.models.content import make_teacher
from vckit.models.vc import build_model
from vckit.config import Config
from vckit.errors import CheckpointError, NoSpeechError, VckitError
from vckit.frontend import Frontend
from vckit.pitch import register_offset, shift_pitch
from vckit.shipped import MODELS as SHIPPED, REPO_ROOT, checkpoint_path, default_checkpoint, is_shipped  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
reference_log = logging.getLogger(f"{__name__}.references")  # Voice.warnings; the CLI prints them itself

MIN_REFERENCE_S = 1.0
MIN_SOURCE_S = 0.1
VOCODER_CHUNK = 256  # mel frames per vocoder call: as fast as 512 on CPU, half the activation memory


@dataclasses.dataclass
class Voice:
    """A target voice, what :meth:`Converter.convert` takes: :meth:`Converter.voice`
    makes it from reference audio, :meth:`Converter.enrolled` from a stored
    speaker, and ``Voice(embedding, f0_median)`` from numbers kept elsewhere.

    ``embedding`` (dim,) is the speaker encoder's output; ``f0_median`` (Hz)
    the median F0 of the references, which sets the register of models with
    an F0 path (None when the references are unvoiced); ``model_id`` the
    sha256 of the weights that made the embedding; ``seconds`` the audio
    used, after trimming leading and trailing silence; ``speech_seconds``
    how much of that a voice-activity measure hears as speech
    (:func:`vckit.activity.measure_speech`: pauses, music and noise do not
    count); ``warnings`` sentences about references that hold little
    speech, are noisy, or hold under 3 s of speech in all (also logged).
    """

    embedding: torch.Tensor
    f0_median: float | None = None
    model_id: str = ""
    seconds: float = 0.0
    speech_seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    speaker_id: str = ""  # what makes the embedding (vckit.speakers.speaker_id): models that share it share voices

    def __repr__(self) -> str:  # the embedding's numbers say nothing to a reader: its size does
        f0 = f"{self.f0_median:.0f} Hz" if self.f0_median else "unknown"
        return (f"Voice({tuple(self.embedding.shape)[-1]}-dim embedding, F0 median {f0}, {self.speech_seconds:.1f} s of speech "
                f"in {self.seconds:.1f} s, model {self.model_id[:12] or 'unknown'}, {len(self.warnings)} warning(s))")


Target = Union[Voice, AudioInput, Sequence[AudioInput]]  # a Voice, or reference audio to make one from
Progress = Union[Callable[[float], None], None]  # called with the share of a conversion done, rising to 1.0
NOT_A_VOICE = ("a speaker embedding alone is not a target voice: pass a Voice, from vc.voice(refs), vc.enrolled(name) "
               "or vckit.Voice(embedding, f0_median)")


def _span(progress: Progress, lo: float, hi: float) -> Progress:
    """``progress`` for one stage of the work: its 0..1 mapped onto ``lo..hi``."""
    return None if progress is None else (lambda f: progress(lo + (hi - lo) * f))


def _report(progress: Progress, share: float) -> None:
    if progress is not None:
        progress(share)


class Converter:
    """A loaded model and vocoder. Create it with :func:`load`."""

    def __init__(self, model: torch.nn.Module, config: Config, vocoder: torch.nn.Module, device: torch.device, model_id: str = ""):
        self.model = model.eval()
        self.config = config
        self.vocoder = vocoder
        self.device = device
        self.model_id = model_id  # sha256 of the weights: enrolled embeddings belong to one model
        self.speaker_id = ""  # ... or to every model with this speaker encoder (set by load)
        self._teacher = None  # the phonetic teacher, loaded on first use by models that read it
        self.checkpoint: Path | None = None  # the folder it was loaded from (set by load)
        # the one step from audio to what the model reads (a causal model hears the teacher block by block)
        self.frontend = Frontend(
            config.mel,
            f0=model.needs_f0,
            phonetic=model.needs_phonetic,
            mel_input=config.model.content.input != "phonetic",
            stream=config.model.stream,
            teacher=lambda: self.teacher,
            project=model.content_encoder.project_teacher if model.needs_phonetic else None,
            device=device,
        )

    @property
    def sample_rate(self) -> int:
        """Sample rate of everything this converter returns."""
        return int(self.vocoder.sample_rate)

    @property
    def teacher(self):
        """The phonetic teacher (``model.content.teacher``: :func:`vckit.models.content.make_teacher`), loaded on first use; for a
        model that carries its own phone student (``model.stream.phonetic: student``), that student."""
        if self._teacher is None:
            if self.model.content_encoder.student is not None:
                from vckit.models.phone_student import StudentTeacher

                self._teacher = StudentTeacher(self.model.content_encoder.student, self.config.mel)
            else:
                self._teacher = make_teacher(self.config.model.content.teacher, threads=max(1, torch.get_num_threads()))
        return self._teacher

    def stream(self, voice: "Voice | AudioInput | Sequence[AudioInput]", *, pitch_shift: float = 0.0, chunk_ms: float | None = None, bf16: bool | None = None):
        """A live conversion into ``voice``, ``push(samples)`` and ``flush()``: see :meth:`vckit.streaming.Stream.open`."""
        from vckit.streaming import Stream

        return Stream.open(self, voice, pitch_shift=pitch_shift, chunk_ms=chunk_ms, bf16=bf16)

    # -- the three calls -------------------------------------------------------
    @torch.inference_mode()
    def voice(self, refs: AudioInput | Sequence[AudioInput], sr: int | None = None) -> Voice:
        """A :class:`Voice` from one or several reference clips, each decoded once.

        Each clip needs at least 1 s of audio after trimming silence, and some
        speech: a clip of music, noise or room tone raises
        :class:`~vckit.errors.NoSpeechError`. Clips with little speech or much
        noise, or under 3 s of speech in all, give ``Voice.warnings``. The
        embeddings of several clips are averaged, and the F0 median is taken
        over the voiced frames of all of them.
        """
        from vckit.activity import MIN_SPEECH_S, measure_speech, reference_warnings

        if isinstance(refs, (str, os.PathLike, np.ndarray, torch.Tensor)):
            refs = [refs]
        if len(refs) == 0:
            raise VckitError("no reference audio given")
        rate = self.config.mel.sample_rate
        embs, f0s, measures = [], [], []
        for i, r in enumerate(refs, 1):
            what = f"reference {Path(r).name}" if isinstance(r, (str, os.PathLike)) else f"reference {i}" if len(refs) > 1 else "reference"
            wav = load_audio(r, rate, sr, trim=True, min_seconds=MIN_REFERENCE_S, what=what)
            m = measure_speech(wav, rate)
            if m.speech_seconds < MIN_SPEECH_S:
                raise NoSpeechError(f"{what} holds no speech that vckit can hear ({m.speech_seconds:.1f} s of {m.seconds:.1f} s): is it music, noise or silence? Give a recording of the target speaker talking")
            measures.append((what, m))
            embs.append(self.model.embed_speaker(log_mel(wav, self.config.mel, self.device)[None])[0])
            f0s.append(m.f0[m.f0 > 0])
        voiced = np.concatenate(f0s)
        f0_median = float(np.median(voiced)) if len(voiced) >= 10 else None
        warnings = reference_warnings(measures)
        for w in warnings:
            reference_log.warning("%s", w)
        seconds, speech = sum(m.seconds for _, m in measures), sum(m.speech_seconds for _, m in measures)
        return Voice(torch.stack(embs).mean(0), f0_median, self.model_id, seconds, speech, warnings, self.speaker_id)

    def enrolled(self, name: str, bank: str | os.PathLike | None = None) -> Voice:
        """The :class:`Voice` of a speaker stored by ``vckit enroll`` (or ``finetune``), for :meth:`convert`.

        A speaker enrolled with another model (the default, for the live one) is made anew for this
        model from the reference clips the profile keeps. Raises VckitError naming both models when
        none of those clips can be read.
        """
        from vckit.speakers import check_profile_model, default_bank, load_profile

        prof = load_profile(bank or default_bank(), name)
        if not self._takes(prof.model_id, prof.meta.get("speaker_id", "")):
            refs = [r for r in prof.meta.get("references", []) if os.path.isfile(r)]
            if refs:
                log.info("speaker %r was enrolled with another model: its voice is made for this one from its %d reference file(s)", name, len(refs))
                return self.voice(refs)
            check_profile_model(prof, self.model_id, str(self.checkpoint or ""))
        seconds = float(prof.meta.get("seconds") or 0.0)
        return Voice(prof.embedding.to(self.device), prof.f0_median, prof.model_id, seconds, seconds, speaker_id=prof.meta.get("speaker_id", ""))

    @torch.inference_mode()
    def _convert_mel(self, source: AudioInput, target: Target, sr: int | None = None, pitch_shift: float = 0.0) -> torch.Tensor:
        """Converted log-mel ``(n_mels, frames)`` of ``source`` in ``target``'s voice, before the
        vocoder: what the benchmarks compare and a vocoder learns to voice (``vckit prepare
        vocoder-teacher``); the public surface hands out audio (:meth:`convert`)."""
        wav = load_audio(source, self.config.mel.sample_rate, sr, trim=False, min_seconds=MIN_SOURCE_S)
        voice = self._voice_of(target, sr)
        return self.model.convert_utterance(self.frontend.frames(wav), voice.embedding, target_f0=voice.f0_median, pitch_shift=pitch_shift)

    def convert(
        self,
        source: AudioInput,
        target: Target,
        sr: int | None = None,
        pitch_shift: float = 0.0,
        match_pitch: bool = False,
        *,
        progress: Progress = None,
    ) -> np.ndarray:
        """Speech of ``source`` in the voice of ``target``.

        Args:
            source: path or array (then ``sr`` is needed).
            target: a :class:`Voice`, from :meth:`voice`, :meth:`enrolled` or
                built as ``Voice(embedding, f0_median)``; reference audio (a
                path, an array or a list of them) is made into one with
                :meth:`voice`. A bare embedding tensor raises
                :class:`~vckit.errors.VckitError`: it carries no F0 median.
            sr: sample rate of array inputs.
            pitch_shift: semitones to move the converted voice's register.
            match_pitch: for models without an F0 path, shift the source so
                its median F0 matches the target's before conversion (models
                with an F0 path always take the target's register).
            progress: called as the work proceeds with the share done, a
                float rising to 1.0 (for a progress bar on long inputs).

        Returns:
            float32 waveform at :attr:`sample_rate`, as long as the source
            (within one hop), muted (with short fades) where the source is
            silent, so the vocoder's faint hum does not fill the pauses.
        """
        rate = self.config.mel.sample_rate
        wav = load_audio(source, rate, sr, trim=False, min_seconds=MIN_SOURCE_S)  # a bad source fails before the voice is made
        voice = self._voice_of(target, sr)
        shift, heard = float(pitch_shift or 0.0), wav
        if not self.model.needs_f0:  # no F0 path: move the source itself (a phase vocoder, which costs words)
            shift += register_offset(wav, rate, voice.f0_median) if match_pitch else 0.0
            heard, shift = (shift_pitch(wav, rate, shift) if shift else wav), 0.0
        with torch.inference_mode():
            x = self.frontend.frames(heard)
            _report(progress, 0.1)  # the features (F0, the phonetic teacher) cost about as much as the model
            mel = self.model.convert_utterance(x, voice.embedding, target_f0=voice.f0_median, pitch_shift=shift, progress=_span(progress, 0.1, 0.3))
            out = self.vocoder.vocode(mel, chunk_frames=VOCODER_CHUNK, progress=_span(progress, 0.3, 1.0))
        out = out.detach().float().cpu().numpy().astype(np.float32)
        # the vocoder hums faintly where the source is silent: mute it there
        return out * silence_gate(wav, rate, len(out), self.sample_rate)

    def pitch_offset(self, source_wav: np.ndarray, voice: Voice) -> float:
        """Semitones from the median F0 of ``source_wav`` (at the model's rate) to
        ``voice``'s F0 median (0 when either is unknown): what ``match_pitch``
        shifts by, and about what a model with an F0 path moves the register by."""
        return register_offset(source_wav, self.config.mel.sample_rate, self._voice_of(voice, None).f0_median)

    def save(self, path: str | os.PathLike, wav: np.ndarray, *, overwrite: bool = False, sample_rate: int | None = None) -> Path:
        """Write ``wav`` (from :meth:`convert`) atomically, resampled to
        ``sample_rate`` if given, in the format ``path``'s suffix names: 16-bit
        WAV or FLAC, OGG Vorbis, or MP3 (:func:`vckit.audio.output_format`)."""
        from vckit.audio import resample

        rate = self.sample_rate
        if sample_rate and sample_rate != rate:
            if not 4000 <= sample_rate <= 192000:
                raise VckitError(f"output sample rate must be between 4000 and 192000 Hz, got {sample_rate}")
            wav, rate = resample(np.asarray(wav, dtype=np.float32), rate, sample_rate), sample_rate
        output_format(path, sample_rate or rate)  # an unwritable name fails before resampling
        return write_audio(path, wav, rate, overwrite=overwrite)

    # -- helpers -------------------------------------------------------------
    def _takes(self, model_id: str, speaker_id: str) -> bool:
        """Whether an embedding made by the model ``model_id`` (speaker encoder ``speaker_id``) serves this model:
        the same weights, the same speaker encoder, or an origin that one side does not know."""
        return not model_id or not self.model_id or model_id == self.model_id or (bool(self.speaker_id) and speaker_id == self.speaker_id)

    def _voice_of(self, target: Target, sr: int | None) -> Voice:
        """``target`` as a :class:`Voice` on this converter's device: a Voice is checked, reference audio made into one."""
        dim = self.config.model.speaker.dim
        if isinstance(target, Voice):
            if not self._takes(target.model_id, target.speaker_id):
                raise VckitError(f"this voice was made by another model ({target.model_id[:12]}), not this one ({self.model_id[:12]}): make it again with vc.voice(refs)")
            if tuple(target.embedding.shape) != (dim,):
                raise VckitError(f"this voice's embedding has shape {tuple(target.embedding.shape)}, but this model's speaker embeddings are ({dim},)")
            return dataclasses.replace(target, embedding=target.embedding.to(self.device))
        if isinstance(target, (torch.Tensor, np.ndarray)) and tuple(target.shape) in ((dim,), (1, dim)):
            raise VckitError(NOT_A_VOICE)  # a waveform that short would be refused anyway (under MIN_REFERENCE_S)
        return self.voice(target, sr)


def load(checkpoint: str | os.PathLike | None = None, *, device: str = "auto", vocoder: str = "hifigan", quantize: bool | float | None = None,
         precision: str = "auto") -> Converter:
    """Load a model for conversion.

    Args:
        checkpoint: a checkpoint folder, or the name of a shipped model
            (``"default"``; ``"stream"``, the causal model :meth:`Converter.stream` needs).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        vocoder: ``hifigan`` (the universal HiFi-GAN, default), ``griffinlim``,
            a path to a HiFi-GAN generator in the released format, or a fast
            vocoder's folder (``vckit train-vocoder``).
        quantize: for a model with a VQ bottleneck, whether conversion uses the
            nearest codebook entries (True) or the encoder's continuous codes
            (False); a number between 0 and 1 moves the continuous codes that
            share of the way to the nearest entries (``model.vq.inference_mix``).
            None keeps what the checkpoint's config says.
        precision: the vocoder's arithmetic: ``auto`` (bfloat16 where the device
            has it natively, a CPU with AVX512-BF16 or AMX, or CUDA; else
            float32), ``fp32`` or ``bf16``. The model itself runs in float32.
            Griffin-Lim and the fast vocoder always run in float32.
    """
    import dataclasses

    from vckit.models.vocoder import load_vocoder
    from vckit.speakers import speaker_id

    from vckit.devices import pick_device, vocoder_dtype

    dev = pick_device(device)
    voc_dtype = vocoder_dtype(precision, dev)
    path = checkpoint_path(checkpoint)
    config, sd, meta = load_checkpoint(path, dev)  # checks the weights against a recorded sha256
    recorded = recorded_sha256(meta)
    if not recorded and is_shipped(path):
        raise CheckpointError(f"the shipped model's {path / 'config.json'} records no sha256 of its weights, so they cannot be checked: restore the file (git checkout or reinstall vckit)")
    if quantize is not None and not config.model.vq.enabled:
        raise VckitError(f"the model in {path} has no VQ bottleneck: the codebook choice (--vq, quantize=) applies only to models trained with one")
    if quantize is not None:
        # a mix of 0 is the continuous codes; VQConfig refuses a mix outside [0, 1]
        mix = 1.0 if isinstance(quantize, bool) else float(quantize)
        vq = dataclasses.replace(config.model.vq, at_inference=bool(quantize), inference_mix=mix or 1.0)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vq=vq))
    model = build_model(config, sd).to(dev).eval()
    voc = load_vocoder(vocoder, config.mel, device=dev)
    if voc_dtype != torch.float32 and voc.takes_bf16:  # benchmarks/convert.py --precisions fp32 bf16: what bf16 gains
        voc = voc.to(voc_dtype)
    model_id = recorded or _weights_hash(path)
    vc = Converter(model, config, voc, dev, model_id)
    vc.checkpoint, vc.speaker_id = path, speaker_id(model, config.mel)
    return vc


def _weights_hash(path: Path) -> str:
    from vckit.checkpoint import WEIGHTS_FILE, sha256_file

    return sha256_file(Path(path) / WEIGHTS_FILE)
