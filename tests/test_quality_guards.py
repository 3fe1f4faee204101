"""Quality guards: what a user gets from the shipped models, measured through the public API.

Fixed held-out pairs (validation speakers of ``../shared/data``, never trained
on; two corpora each way across gender) go through ``vckit.load()`` and
HiFi-GAN as ``vckit convert`` runs them, and the live model through
``Converter.stream`` pushed in sound-card-sized pieces. Two judges that are
not the model's own losses score the output:

- the voice: the project's speaker-verification judge
  (``checkpoints/speaker_verification``) must put each conversion closer to
  the target's reference than to its source, and the mean cosine to the
  target above a floor;
- the words, without the ASR judge: hama's phoneme recogniser (the teacher)
  hears the source and the conversion; on the frames where it hears a phone
  in the source, the same phone must be its best guess in the output within
  one frame (20 ms), on average above a floor and for each pair above a
  lower one.

The floors are today's shipped models' figures less a margin (``FLOORS``;
their measured values are beside them): raise them when a better model
ships. A bar that a model card says is missed is an ``xfail(strict=True)``,
so meeting it later fails here until the mark is removed.

``VCKIT_CHECKPOINT=folder pytest tests/test_quality_guards.py`` guards
another default model (a candidate before it ships).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, REPO_ROOT
from vckit import load
from vckit.audio import load_audio, log_mel, resample
from vckit.evaluation.metrics import source_scores
from vckit.models.teacher import BLANK, SAMPLE_RATE, PhoneticTeacher
from vckit.models.verifier import load_verifier

# (kind, source, references) under ../shared/data: validation speakers only
PAIRS = (
    ("m2f", "cmu_arctic_dev/rms/arctic_b0503.flac", ("vctk/p228/p228_004.wav",)),
    ("f2m", "vctk_more/p249/p249_002.flac", ("vcc2016/SM1/100001.wav", "vcc2016/SM1/100003.wav")),
    ("f2m", "cmu_arctic_dev/ljm/arctic_a0283.flac", ("vctk/p226/p226_004.wav",)),
    ("m2f", "vctk_more/p232/p232_004.flac", ("librispeech_train_clean_100/1183/1183-124566-0000.flac",)),
)
LIVE_PAIRS = PAIRS[:2]  # the live model runs block by block, slower than real time on a busy machine: two pairs
PUSH = 512  # samples per push, as a sound card's callback gives them

# floors, each with what the shipped model measured: the default of 2026-12-06 (lineage step 13,104, the phonetic and
# voice-consistency losses; the step-10,222 model before it, phonetic loss only, measured 0.503; 0.933, lowest 0.871,
# and the step-2,400 one 0.598; 0.909, lowest 0.829), the live model of 2026-12-04 (step 3,800)
FLOORS = {
    "default": {"cos_target": 0.56, "phones": 0.86, "phones_each": 0.78},  # measured 0.616; 0.910, lowest 0.843
    "stream": {"cos_target": 0.43, "phones": 0.75, "phones_each": 0.62},  # measured 0.473; 0.808, lowest 0.692 (the phone student's, 2026-12-06)
}
# decoder weights halved (the acceptance check of issue 27): cos_target 0.148, phones 0.567, two pairs not closer


@dataclasses.dataclass
class Scored:
    kind: str
    cos_target: float  # judge cosine of the output to the target's references
    cos_source: float  # ... and to the source
    phones: float  # share of the source's phone frames whose phone the teacher hears in the output within 20 ms
    output: np.ndarray  # the converted audio at the model's rate
    source: np.ndarray


class Judges:
    def __init__(self) -> None:
        self.sv, _ = load_verifier(REPO_ROOT / "checkpoints" / "speaker_verification")
        self.teacher = PhoneticTeacher(threads=1)

    @torch.inference_mode()
    def embed(self, wav: np.ndarray) -> torch.Tensor:
        return self.sv(log_mel(wav, self.sv.cfg.mel)[None])[0].float()

    def phones_kept(self, source: np.ndarray, output: np.ndarray, sr: int) -> float:
        a, b = (self.teacher.run16k(resample(w, sr, SAMPLE_RATE)).log_probs.argmax(1) for w in (source, output))
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        heard = a != BLANK
        near = np.zeros(n, dtype=bool)
        for lag in (-1, 0, 1):
            near |= np.roll(b, lag) == a
        return float(near[heard].mean())

    def score(self, kind: str, source: np.ndarray, output: np.ndarray, refs: np.ndarray, sr: int) -> Scored:
        e_out, e_ref, e_src = self.embed(output), self.embed(refs), self.embed(source)
        return Scored(kind, float(e_out @ e_ref), float(e_out @ e_src), self.phones_kept(source, output, sr), output, source)


def _pair_audio(sr: int, source: str, refs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    src = load_audio(DATA_DIR / source, sr, trim=False)  # as `vckit convert` reads a source
    ref = np.concatenate([load_audio(DATA_DIR / r, sr) for r in refs])
    return src, ref


def streamed(stream, wav: np.ndarray, piece: int) -> np.ndarray:
    """``wav`` through a fresh ``stream`` in pieces of ``piece`` samples, the delay removed."""
    out = [stream.push(wav[i : i + piece]) for i in range(0, len(wav), piece)]
    return np.concatenate([*out, stream.flush()])[stream.delay :]


@pytest.fixture(scope="module")
def judges(data_dir) -> Judges:
    return Judges()


@pytest.fixture(scope="module")
def default_scores(judges) -> list[Scored]:
    vc = load(device="cpu")  # the default model, or $VCKIT_CHECKPOINT
    sr = vc.sample_rate
    out = []
    for kind, source, refs in PAIRS:
        src, ref = _pair_audio(sr, source, refs)
        out.append(judges.score(kind, src, vc.convert(src, [DATA_DIR / r for r in refs], sr=sr), ref, sr))
    return out


@pytest.fixture(scope="module")
def live():
    return load("stream", device="cpu")


@pytest.fixture(scope="module")
def live_scores(judges, live) -> list[Scored]:
    sr = live.sample_rate
    out = []
    for kind, source, refs in LIVE_PAIRS:
        src, ref = _pair_audio(sr, source, refs)
        voice = live.voice([DATA_DIR / r for r in refs])
        out.append(judges.score(kind, src, streamed(live.stream(voice), src, PUSH), ref, sr))
    return out


def _check(scores: list[Scored], floor: dict[str, float]) -> None:
    table = [(s.kind, round(s.cos_target, 3), round(s.cos_source, 3), round(s.phones, 3)) for s in scores]
    assert all(s.cos_target > s.cos_source for s in scores), f"a conversion is closer to its source than to the target: {table}"
    assert np.mean([s.cos_target for s in scores]) >= floor["cos_target"], table
    assert np.mean([s.phones for s in scores]) >= floor["phones"], table
    assert min(s.phones for s in scores) >= floor["phones_each"], table


def test_the_default_model_changes_the_voice_and_keeps_the_phones(default_scores):
    _check(default_scores, FLOORS["default"])


def test_the_live_model_changes_the_voice_and_keeps_the_phones(live_scores):
    _check(live_scores, FLOORS["stream"])


def test_the_live_models_delay_is_what_its_card_says(live):
    card = (REPO_ROOT / "checkpoints" / "stream" / "MODEL_CARD.md").read_text()
    said = int(re.search(r"fixed delay of (\d+) ms", card).group(1))
    stream = live.stream(live.voice(DATA_DIR / LIVE_PAIRS[0][2][0]))
    assert round(stream.delay_ms) == said == 145
    assert stream.delay_ms <= 150  # issue 29's bar for live use


def test_a_voice_made_once_serves_the_default_and_the_live_model(live):
    """The shipped live model shares the shipped default's speaker encoder (``train.speaker_from``), so voices and
    enrolled speakers made with either serve both; a default shipped with a speaker encoder that moved would
    break that (a branch to ship cools down with ``train.speaker_from: checkpoints/default``)."""
    default = load("default", device="cpu", vocoder="griffinlim")
    assert default.speaker_id == live.speaker_id and default.model_id != live.model_id


def test_block_by_block_output_is_the_whole_file_streamed_at_once(live, live_scores):
    """The first live pair pushed in one piece gives the samples it gave in 512-sample pieces."""
    sr = live.sample_rate
    kind, source, refs = LIVE_PAIRS[0]
    src, _ = _pair_audio(sr, source, refs)
    whole = streamed(live.stream(live.voice([DATA_DIR / r for r in refs])), src, len(src))
    pieces = live_scores[0].output
    assert len(whole) == len(pieces) == len(src)
    np.testing.assert_allclose(whole, pieces, atol=1e-4)


# -- bars the model cards say are missed: each fails here once it is met ---------------------
def _f0_kept(scores: list[Scored], kind: str, sr: int) -> dict[str, float]:
    rows = [source_scores(resample(s.output, sr, 16000), resample(s.source, sr, 16000), 16000) for s in scores if s.kind == kind]
    return {k: float(np.mean([r[k] for r in rows])) for k in ("vuv_agreement", "f0_corr_robust")}


@pytest.mark.xfail(strict=True, reason="card: F->M voicing agreement 74 %, F0 correlation 0.76 on the wide set (issue 29 bar: 85 %, 0.7); here 0.65 and 0.58")
def test_bar_female_to_male_keeps_voicing_and_intonation(default_scores):
    kept = _f0_kept(default_scores, "f2m", 22050)
    assert kept["vuv_agreement"] >= 0.85 and kept["f0_corr_robust"] >= 0.7, kept


@pytest.mark.xfail(strict=True, reason="card: the live model keeps fewer words than the default (WER 38 % across gender against 23 %); here phones 0.81 against the offline floor 0.86")
def test_bar_the_live_model_keeps_phones_as_the_offline_one_does(live_scores):
    assert np.mean([s.phones for s in live_scores]) >= FLOORS["default"]["phones"]
