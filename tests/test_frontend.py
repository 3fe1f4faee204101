"""The one front-end: a causal model reads the same features offline and live, whatever the push sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vckit.audio import load_audio
from vckit.config import MelConfig, StreamConfig
from vckit.errors import VckitError
from vckit.frontend import BlockFrontend, Frontend

SR = MelConfig().sample_rate


@pytest.fixture(scope="module")
def teacher():
    from vckit.models.teacher import PhoneticTeacher

    return PhoneticTeacher(threads=1)


def _project(hidden: torch.Tensor) -> torch.Tensor:
    """A fixed projection of the teacher's 256 dims to 8, as a content encoder's would be."""
    g = torch.Generator().manual_seed(0)
    return (hidden @ torch.randn(256, 8, generator=g)).transpose(1, 2)


def _streamed(fe: Frontend, wav: np.ndarray, step: int, pieces: list[int]) -> dict[str, torch.Tensor]:
    """Push ``wav`` in pieces of the given sizes, take every step as it becomes ready, then pad to the end."""
    blocks = fe.blocks(step)
    out: list = []
    i = 0
    for size in pieces:
        blocks.push(wav[i : i + size])
        i += size
        while blocks.ready:
            out.append(blocks.next())
    n = len(wav) // fe.mel.hop_length
    while blocks.frames_done < n:
        blocks.pad()
        out.append(blocks.next())
    return {k: torch.cat([getattr(x, k) for x in out], -1)[..., :n] for k in ("mel", "f0", "phonetic")}


@pytest.mark.parametrize("step", [6, 12])
def test_streamed_blocks_equal_the_whole_utterance_features_of_a_causal_model(teacher, speech, step):
    wav = load_audio(speech, SR)[: SR * 2 + 555]
    fe = Frontend(MelConfig(), f0=True, phonetic=True, stream=StreamConfig(causal=True), teacher=teacher, project=_project)
    whole = fe.frames(wav)
    n = whole.frames
    rng = np.random.default_rng(0)
    pieces = rng.integers(1, 3000, size=200).tolist()
    live = _streamed(fe, wav, step, pieces)
    # the teacher: one run per model block, the same windows in both modes, so the same numbers
    torch.testing.assert_close(live["phonetic"], whole.phonetic, atol=1e-5, rtol=0)
    # the log-mel: the same analysis; only the edges differ (the whole utterance is reflect-padded, a stream starts from silence)
    torch.testing.assert_close(live["mel"][..., 2 : n - 2], whole.mel[..., 2 : n - 2], atol=1e-4, rtol=0)
    # the F0 of a stream is tracked over the last half second, so it may differ a little from the whole utterance's
    voiced_live, voiced_whole = live["f0"][0] > 0, whole.f0[0] > 0
    assert (voiced_live == voiced_whole).float().mean() > 0.9
    both = voiced_live & voiced_whole
    ratio = live["f0"][0][both] / whole.f0[0][both]
    assert ((ratio - 1).abs() < 0.03).float().mean() > 0.9


def test_the_push_sizes_change_nothing(teacher, speech):
    wav = load_audio(speech, SR)[: SR + 321]
    fe = Frontend(MelConfig(), f0=True, phonetic=True, stream=StreamConfig(causal=True), teacher=teacher, project=_project)
    one = _streamed(fe, wav, 6, [len(wav)])
    many = _streamed(fe, wav, 6, [256] * (len(wav) // 256 + 1))
    for k in one:
        torch.testing.assert_close(one[k], many[k], atol=0, rtol=0)


def test_the_caches_and_the_model_read_the_same_features(teacher, speech):
    """``features`` (the training caches, numpy, unprojected) and ``frames`` (conversion) share every formula."""
    wav = load_audio(speech, SR)[:SR]
    for stream in (None, StreamConfig(causal=True)):
        fe = Frontend(MelConfig(), f0=True, phonetic=True, stream=stream, teacher=teacher, project=_project)
        feats, x = fe.features(wav, mel=True), fe.frames(wav)
        np.testing.assert_array_equal(feats.mel, x.mel[0].numpy())
        np.testing.assert_array_equal(feats.f0, x.f0[0].numpy())
        torch.testing.assert_close(_project(torch.from_numpy(feats.hidden)[None]), x.phonetic)
    assert Frontend(MelConfig(), phonetic=True, teacher=teacher).features(wav, posteriors=True).log_probs.shape == (len(wav) // 256, 191)


def test_the_teacher_is_made_on_first_use_and_only_where_needed(speech):
    made = []

    def make():
        from vckit.models.teacher import PhoneticTeacher

        made.append(1)
        return PhoneticTeacher(threads=1)

    wav = load_audio(speech, SR)[:SR]
    fe = Frontend(MelConfig(), f0=True, phonetic=True, teacher=make)
    assert not made
    fe.features(wav)
    fe.features(wav)
    assert made == [1]
    x = Frontend(MelConfig(), f0=True).frames(wav)  # a model reading the mel and F0 only needs no teacher
    assert x.phonetic is None and x.f0.shape == (1, x.mel.shape[-1])


def test_wrong_use_is_one_clear_error(teacher):
    with pytest.raises(VckitError, match="teacher"):
        Frontend(MelConfig(), phonetic=True)
    with pytest.raises(VckitError, match="causal"):
        Frontend(MelConfig(), phonetic=True, teacher=teacher).blocks(6)
    fe = Frontend(MelConfig(), phonetic=True, stream=StreamConfig(causal=True, block_frames=6), teacher=teacher)
    with pytest.raises(VckitError, match="whole number"):
        fe.blocks(8)
    blocks: BlockFrontend = fe.blocks(6)
    blocks.push(np.zeros(100, np.float32))
    with pytest.raises(VckitError, match="more input"):
        blocks.next()
    with pytest.raises(VckitError, match="whole utterance"):
        fe.features(np.zeros(SR, np.float32), posteriors=True)
