"""Fine-tuning: from an inference checkpoint to a new checkpoint and an
enrolled speaker; frozen parts stay put, the rest fits the new voice; bad
input gives one clear error."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import vckit
from conftest import TINY_MODEL
from vckit.checkpoint import WEIGHTS_FILE, load_checkpoint, read_meta, save_checkpoint, sha256_file
from vckit.models.vc import export_for_inference
from vckit.cli import main as vckit_main
from vckit.config import Config, from_dict
from vckit.data.manifest import read_manifest
from vckit.errors import ConfigError, VckitError
from vckit.training.finetune import FinetuneConfig, finetune
from vckit.models import VoiceConversionModel
from vckit.speakers import load_profile

FAST = FinetuneConfig(steps=30, batch_size=8, segment_frames=32, lr=2e-3, warmup_steps=3, replay="")


def make_source(root: Path, model_cfg: dict, projection: dict | None = None) -> Path:
    """A tiny model shipped like checkpoints/default: fp16, no adversary, sha256 recorded.
    Its training data is not on this machine (so replay "auto" finds none). A
    phonetic-input model carries ``projection`` (float32 ``mean``, ``proj``)."""
    gone = str(root / "gone")
    cfg = from_dict(Config, {"model": model_cfg, "data": {"train_manifest": f"{gone}/train.jsonl", "features": f"{gone}/features"}})
    torch.manual_seed(0)
    model = VoiceConversionModel(cfg.mel, cfg.model)
    if projection is not None:
        model.content_encoder.teacher_mean.copy_(torch.from_numpy(projection["mean"]))
        model.content_encoder.teacher_proj.copy_(torch.from_numpy(projection["proj"]))
    save_checkpoint(root / "train", cfg, model.state_dict(), step=100)
    return export_for_inference(root / "train", root / "model", extra={"name": "tiny"})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny VQ model."""
    return make_source(tmp_path_factory.mktemp("source"), {**TINY_MODEL, "vq": {"enabled": True, "codebook_size": 32}})


@pytest.fixture(scope="module")
def voices(tmp_path_factory, data_dir) -> Path:
    """voices/<speaker>/*.wav: two held-out speakers, five real utterances each (~17 s)."""
    root = tmp_path_factory.mktemp("voices") / "voices"
    for name, spk in (("sm1", "SM1"), ("sf1", "SF1")):
        (root / name).mkdir(parents=True)
        for f in sorted((data_dir / "vcc2016" / spk).glob("*.wav"))[:5]:
            shutil.copy(f, root / name / f.name)
    return root


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def test_finetune_trains_only_the_chosen_parts_and_enrolls(source, voices, tmp_path):
    before_src = folder_digest(source)
    out, bank = tmp_path / "ft" / "me", tmp_path / "bank"
    res = finetune(source, voices / "sm1", out, speaker="me", config=FAST, bank=bank, device="cpu", progress=False)
    assert res.checkpoint == out and res.steps == 30 and list(res.speakers) == ["me"]
    assert res.replay_speakers == 0 and res.new_share == pytest.approx(1.0)
    assert 15 < res.speakers["me"] < 25
    assert res.recon_after < 0.9 * res.recon_before  # it fits the new voice
    assert folder_digest(source) == before_src  # the source is never touched
    assert sorted(p.name for p in out.parent.iterdir()) == ["me"]  # no work folder left behind

    _, sd0, _ = load_checkpoint(source)
    _, sd1, meta = load_checkpoint(out)
    assert sd0.keys() == sd1.keys()
    frozen = [k for k in sd0 if k.startswith(("content_encoder.", "vq."))]
    learnt = [k for k in sd0 if k.startswith(("decoder.", "speaker_encoder.")) and sd0[k].is_floating_point()]
    assert frozen and all(torch.equal(sd0[k], sd1[k]) for k in frozen)  # VQ codebook included
    assert sum(not torch.equal(sd0[k], sd1[k]) for k in learnt) > 0.8 * len(learnt)
    assert meta["speakers"] == ["me"] and meta["finetuned_from"] == str(source) and meta["finetune"]["steps_done"] == 30
    assert meta["sha256"][WEIGHTS_FILE] == sha256_file(out / WEIGHTS_FILE)

    vc = vckit.load(out, device="cpu", vocoder="griffinlim")
    prof = load_profile(bank, "me")
    assert prof.model_id == vc.model_id and prof.meta["finetuned"] and len(prof.meta["references"]) == 5
    refs = prof.meta["references"]
    torch.testing.assert_close(prof.embedding, vc.voice(refs).embedding)  # what `vckit enroll` would store
    wav = vc.convert(str(voices / "sf1" / "100001.wav"), target=vc.enrolled("me", bank))
    assert np.isfinite(wav).all() and len(wav) > 0

    # never replaces an output or a profile unasked
    with pytest.raises(VckitError, match="already exists"):
        finetune(source, voices / "sm1", out, speaker="me", config=FAST, bank=bank, device="cpu", progress=False)
    with pytest.raises(VckitError, match="already enrolled"):
        finetune(source, voices / "sm1", tmp_path / "other", speaker="me", config=FAST, bank=bank, device="cpu", progress=False)


def test_finetune_content_encoder_when_asked(source, voices, tmp_path):
    cfg = FinetuneConfig(steps=5, batch_size=4, segment_frames=32, lr=2e-3, train=("content_encoder", "decoder"))
    res = finetune(source, voices / "sf1", tmp_path / "m", speaker="her", config=cfg, enroll=False, device="cpu", progress=False)
    assert res.profiles == {}
    _, sd0, _ = load_checkpoint(source)
    _, sd1, _ = load_checkpoint(tmp_path / "m")
    assert not torch.equal(sd0["content_encoder.inp.weight"], sd1["content_encoder.inp.weight"])
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0 if k.startswith("speaker_encoder."))


def test_replay_mixes_the_source_data_into_each_batch(source, voices, tiny_cache, tmp_path):
    cfg = FinetuneConfig(steps=5, batch_size=8, segment_frames=32, replay=str(tiny_cache["root"]), replay_fraction=0.25)
    res = finetune(source, voices / "sm1", tmp_path / "m", speaker="me", config=cfg, bank=tmp_path / "bank", device="cpu", progress=False)
    assert res.replay_speakers == 5 and res.new_share == pytest.approx(0.75) and res.replay == str(tiny_cache["train"])
    assert read_meta(tmp_path / "m")["speakers"] == ["me"] and list(res.profiles) == ["me"]
    # "auto": the training data the source's config names, when it is here; a cap spreads it over the speakers
    here = tmp_path / "source_here"
    shutil.copytree(source, here)
    meta = json.loads((here / "config.json").read_text())
    meta["config"]["data"].update(train_manifest=str(tiny_cache["train"]), features=str(tiny_cache["features"]))
    (here / "config.json").write_text(json.dumps(meta))
    auto = FinetuneConfig(steps=2, batch_size=4, segment_frames=32, replay_minutes=0.1)
    res = finetune(here, voices / "sm1", tmp_path / "a", speaker="me", config=auto, enroll=False, device="cpu", progress=False)
    assert res.replay == str(tiny_cache["train"]) and 1 <= res.replay_speakers < 5  # 6 s: one utterance of a few speakers
    res = finetune(source, voices / "sm1", tmp_path / "b", speaker="me", config=dataclasses.replace(auto, steps=1), enroll=False, device="cpu", progress=False)
    assert res.replay == "" and res.replay_speakers == 0
    # an interrupted "auto" run resumes with the same replay: the source's data, not its own deleted work folder
    from vckit.training.finetune import FineTuner

    step = FineTuner.train_step

    def stopped_at_1(self):
        stats = step(self)
        if self.step == 1:
            self._handle_signal(2, None)
        return stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FineTuner, "train_step", stopped_at_1)
        assert finetune(here, voices / "sm1", tmp_path / "r", speaker="me", config=auto, enroll=False, device="cpu", progress=False).interrupted
    res = finetune(here, None, tmp_path / "r", enroll=False, device="cpu", progress=False, resume=True)
    assert res.steps == 2 and res.replay == str(tiny_cache["train"]) and res.replay_speakers >= 1
    with pytest.raises(VckitError, match="not a prepared cache"):
        finetune(source, voices / "sm1", tmp_path / "n", speaker="me", config=FinetuneConfig(replay=str(tmp_path)), device="cpu", progress=False)
    with pytest.raises(ConfigError, match="replay_fraction"):
        FinetuneConfig(replay_fraction=1.0)


def test_inference_codes_train_the_decoder_on_continuous_codes(source, voices, tmp_path, monkeypatch):
    """A model that skips its VQ at inference: with inference_codes the decoder never sees quantised codes."""
    from vckit.models.quantizer import VectorQuantizer

    cont = tmp_path / "continuous"
    shutil.copytree(source, cont)
    meta = json.loads((cont / "config.json").read_text())
    meta["config"]["model"]["vq"]["at_inference"] = False
    (cont / "config.json").write_text(json.dumps(meta))
    calls = []
    forward = VectorQuantizer.forward
    monkeypatch.setattr(VectorQuantizer, "forward", lambda self, z: calls.append(1) or forward(self, z))
    run = dict(speaker="me", enroll=False, device="cpu", progress=False)
    finetune(cont, voices / "sm1", tmp_path / "a", config=dataclasses.replace(FAST, steps=3, inference_codes=True), **run)
    assert calls == []
    finetune(cont, voices / "sm1", tmp_path / "b", config=dataclasses.replace(FAST, steps=3, inference_codes=False), **run)
    assert len(calls) == 3  # one batch a step, quantised as in training


def test_cli_finetunes_several_speakers_then_converts(source, voices, tmp_path, capsys):
    out, bank = tmp_path / "model", tmp_path / "bank"
    args = ["finetune", "--from", str(source), "--data", str(voices), "--out", str(out), "--steps", "4", "--batch-size", "4", "--bank", str(bank), "--device", "cpu", "--quiet"]
    assert vckit_main(args) == 0
    printed = capsys.readouterr().out
    assert "enrolled sf1" in printed and "enrolled sm1" in printed and f"wrote {out}" in printed
    assert read_meta(out)["speakers"] == ["sf1", "sm1"]
    wav_out = tmp_path / "conv.wav"
    src = voices / "sm1" / "100001.wav"
    assert vckit_main(["convert", str(src), "--speaker", "sf1", "--bank", str(bank), "--checkpoint", str(out), "--vocoder", "griffinlim", "--device", "cpu", "-o", str(wav_out)]) == 0
    assert sf.info(str(wav_out)).duration > 1.0
    # again: refused, then replaced with --overwrite
    assert vckit_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert vckit_main(args + ["--overwrite", "--steps", "2"]) == 0
    assert read_meta(out)["finetune"]["steps_done"] == 2


def test_bad_input_is_one_clear_error(source, voices, tmp_path, data_dir, capsys):
    run = dict(config=FAST, bank=tmp_path / "bank", device="cpu", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VckitError, match="no readable audio"):
        finetune(source, tmp_path / "empty", tmp_path / "o", speaker="x", **run)
    with pytest.raises(VckitError, match="not found"):
        finetune(source, tmp_path / "missing", tmp_path / "o", speaker="x", **run)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(bad / "silent.wav", np.zeros(48000, dtype=np.float32), 16000)
    with pytest.raises(VckitError, match="no usable audio"):
        finetune(source, bad, tmp_path / "o", speaker="x", **run)
    short = tmp_path / "short"
    short.mkdir()
    shutil.copy(data_dir / "vcc2016" / "SF1" / "100001.wav", short / "a.wav")
    with pytest.raises(VckitError, match=r"at least 10 s"):
        finetune(source, short, tmp_path / "o", speaker="x", **run)
    with pytest.raises(VckitError, match="invalid speaker name"):
        finetune(source, voices / "sm1", tmp_path / "o", speaker="no/slash", **run)
    with pytest.raises(VckitError, match="is the source checkpoint"):
        finetune(source, voices / "sm1", source, speaker="x", overwrite=True, **run)
    with pytest.raises(VckitError, match="not a vckit checkpoint"):
        finetune(voices, voices / "sm1", tmp_path / "o", speaker="x", **run)
    with pytest.raises(ConfigError, match="parts to train"):
        FinetuneConfig(train=("decoder", "vocoder"))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.finetune-*"))
    assert vckit_main(["finetune", "--data", str(tmp_path / "empty"), "--speaker", "x", "--out", str(tmp_path / "o"), "--from", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no readable audio") and "\n" not in err


# -- models that read per-frame features ------------------------------------------
TEACHER_PROJECTION = {  # what a phonetic model's training cache fitted (float32; the shipped model holds it in fp16)
    "mean": np.random.default_rng(0).normal(0, 0.5, 256).astype(np.float32),
    "proj": np.random.default_rng(1).normal(0, 0.1, (8, 256)).astype(np.float32),
}


def prepared_with_frame_features(tiny_cache: dict, dst: Path, projection: dict | None = None) -> Path:
    """A copy of the tiny prepared cache (train.jsonl + features/) with F0 and teacher features:
    the PCA fitted on its training rows, or ``projection``."""
    from vckit.data.frame_features import cache_frame_features

    shutil.copytree(tiny_cache["root"], dst, ignore=shutil.ignore_patterns("unused_run", "*.yaml"))
    train = [r["path"] for r in read_manifest(dst / "train.jsonl")]
    cache_frame_features(dst / "features", fit_paths=train, projection=projection, progress=False)
    return dst


@pytest.fixture(scope="module")
def f0_source(tmp_path_factory) -> Path:
    """A tiny model with an F0 path into the decoder."""
    return make_source(tmp_path_factory.mktemp("f0_source"), {**TINY_MODEL, "f0": {"enabled": True}})


@pytest.fixture(scope="module")
def phonetic_source(tmp_path_factory) -> Path:
    """A tiny model that reads 8 projected teacher dims and has an F0 path."""
    model = {**TINY_MODEL, "content": {**TINY_MODEL["content"], "input": "phonetic", "input_dim": 8}, "f0": {"enabled": True}}
    return make_source(tmp_path_factory.mktemp("phonetic_source"), model, TEACHER_PROJECTION)


@pytest.fixture(scope="module")
def featured_replay(tiny_cache, tmp_path_factory) -> Path:
    """The tiny prepared cache with frame features (its own PCA of the teacher)."""
    return prepared_with_frame_features(tiny_cache, tmp_path_factory.mktemp("featured") / "cache")


@pytest.fixture
def spy_frame_features(monkeypatch) -> list[dict]:
    """Records each cache_frame_features call: the projection given, the one written, the summary."""
    import vckit.data.frame_features as ff
    from vckit.data.frame_features import load_projection

    calls: list[dict] = []
    real = ff.cache_frame_features

    def spy(folder, **kw):
        summary = real(folder, **kw)
        calls.append({"given": kw.get("projection"), "written": load_projection(folder), "summary": summary})
        return summary

    monkeypatch.setattr(ff, "cache_frame_features", spy)
    return calls


def test_finetune_an_f0_model_end_to_end(f0_source, voices, featured_replay, tiny_cache, tmp_path, spy_frame_features, caplog):
    out, bank = tmp_path / "me", tmp_path / "bank"
    cfg = dataclasses.replace(FAST, replay=str(featured_replay))
    res = finetune(f0_source, voices / "sm1", out, speaker="me", config=cfg, bank=bank, device="cpu", progress=False)
    assert res.steps == 30 and res.replay_speakers == 5 and res.new_share == pytest.approx(0.5)  # the replay cache has F0 too
    assert res.recon_after < res.recon_before
    [call] = spy_frame_features
    assert call["given"] is None and call["summary"]["voiced"] > 0.3  # the new speaker's F0, computed for training

    vc = vckit.load(out, device="cpu", vocoder="griffinlim")
    assert vc.model.needs_f0 and not vc.model.needs_phonetic
    prof = load_profile(bank, "me")
    voice = vc.voice(prof.meta["references"])
    torch.testing.assert_close(prof.embedding, voice.embedding)  # enrolled with one voice() call
    assert prof.f0_median == pytest.approx(voice.f0_median) and 70 < prof.f0_median < 200  # SM1 is a male voice
    wav = vc.convert(str(voices / "sf1" / "100001.wav"), target=vc.enrolled("me", bank))  # the profile's embedding and F0 median
    assert np.isfinite(wav).all() and len(wav) > 0

    # a replay cache without F0 cannot train this model: replay is skipped, with the reason
    caplog.clear()
    plain = dataclasses.replace(FAST, steps=2, replay=str(tiny_cache["root"]))
    res = finetune(f0_source, voices / "sm1", tmp_path / "b", speaker="me", config=plain, enroll=False, device="cpu", progress=False)
    assert res.replay == "" and res.replay_speakers == 0 and res.steps == 2
    assert "replay skipped" in caplog.text and "no f0.npy" in caplog.text


def test_finetune_a_phonetic_model_keeps_its_projection(phonetic_source, voices, featured_replay, tiny_cache, tmp_path, spy_frame_features, caplog, monkeypatch):
    from vckit.training.vc import Trainer

    set_by_trainer = []
    real_set = Trainer._set_projection

    def spy_set(self):
        real_set(self)
        enc = self.model.content_encoder
        set_by_trainer.append({"mean": enc.teacher_mean.cpu().numpy().copy(), "proj": enc.teacher_proj.cpu().numpy().copy()})

    monkeypatch.setattr(Trainer, "_set_projection", spy_set)
    _, sd0, _ = load_checkpoint(phonetic_source)
    carried = {"mean": sd0["content_encoder.teacher_mean"].float().numpy(), "proj": sd0["content_encoder.teacher_proj"].float().numpy()}
    assert not np.array_equal(carried["proj"], TEACHER_PROJECTION["proj"])  # fp16-rounded in the shipped model
    # the model's own training cache (float32 projection) is replayed
    replay = prepared_with_frame_features(tiny_cache, tmp_path / "own_cache", TEACHER_PROJECTION)
    spy_frame_features.clear()
    out = tmp_path / "me"
    cfg = dataclasses.replace(FAST, steps=10, replay=str(replay))
    res = finetune(phonetic_source, voices / "sm1", out, speaker="me", config=cfg, bank=tmp_path / "bank", device="cpu", progress=False)
    assert res.replay_speakers == 5 and res.steps == 10
    [call] = spy_frame_features
    for k in ("mean", "proj"):  # the new speakers' features are projected exactly as the source model projects
        np.testing.assert_array_equal(call["given"][k], carried[k])
        np.testing.assert_array_equal(call["written"][k], carried[k])
        np.testing.assert_array_equal(set_by_trainer[0][k], carried[k])  # what Trainer._set_projection read from the merged cache
    _, sd1, _ = load_checkpoint(out)
    for k in ("content_encoder.teacher_mean", "content_encoder.teacher_proj"):
        assert torch.equal(sd1[k], sd0[k])  # the trainer did not swap in another projection
    vc = vckit.load(out, device="cpu", vocoder="griffinlim")
    wav = vc.convert(str(voices / "sf1" / "100001.wav"), target=vc.enrolled("me", tmp_path / "bank"))
    assert np.isfinite(wav).all() and len(wav) > 0

    # a cache whose teacher features were projected otherwise cannot be replayed
    caplog.clear()
    other = dataclasses.replace(FAST, steps=1, replay=str(featured_replay))
    res = finetune(phonetic_source, voices / "sm1", tmp_path / "b", speaker="me", config=other, enroll=False, device="cpu", progress=False)
    assert res.replay == "" and "replay skipped" in caplog.text and "projects the phonetic teacher differently" in caplog.text


def test_auto_replay_without_the_training_cache_warns_with_the_command(tmp_path, caplog):
    """A fresh clone has no cache/shared_dev: replay is skipped out loud, with how to build it."""
    import logging

    from vckit.training.finetune_data import find_replay

    cfg = from_dict(Config, {"model": {"f0": {"enabled": True}}, "data": {"train_manifest": "cache/nowhere_dev/train.jsonl", "features": "cache/nowhere_dev/features"}})
    with caplog.at_level(logging.WARNING, logger="vckit"):
        assert find_replay("auto", cfg) is None
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "replay skipped" in warning[0]
    assert "python recipes/nowhere_dev/prepare.py --data CORPUS --out cache/nowhere_dev --frame-features" in warning[0]
    assert "../shared/data" not in warning[0]  # the project's development speech, which a user does not have
    caplog.clear()
    assert find_replay("", cfg) is None and not caplog.records  # --replay none: asked for, no warning


def test_ctrl_c_keeps_what_was_learnt_until_then(source, voices, tmp_path, monkeypatch, capsys):
    """The signal lands during step 4 of 30 (as Ctrl-C would): the model of those 4 steps is written and
    enrolled, says it was interrupted, and the CLI exits 130 saying so."""
    from vckit.training.finetune import FineTuner

    step = FineTuner.train_step

    def stopped_at_4(self):
        stats = step(self)
        if self.step == 4:
            self._handle_signal(2, None)  # SIGINT, delivered as the loop's handler receives it
        return stats

    monkeypatch.setattr(FineTuner, "train_step", stopped_at_4)
    out, bank = tmp_path / "ft", tmp_path / "bank"
    res = finetune(source, voices / "sm1", out, speaker="me", config=FAST, bank=bank, device="cpu", progress=False)
    assert res.interrupted and res.steps == 4 and res.checkpoint == out
    meta = read_meta(out)
    assert meta["finetune"]["steps_done"] == 4 and meta["finetune"]["interrupted"] is True
    assert load_profile(bank, "me").model_id == vckit.load(out, device="cpu", vocoder="griffinlim").model_id

    args = ["finetune", "--data", str(voices / "sf1"), "--speaker", "her", "--out", str(tmp_path / "cli"), "--from", str(source),
            "--steps", "30", "--batch-size", "8", "--replay", "none", "--bank", str(bank), "--device", "cpu", "--quiet"]
    assert vckit_main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted after 4 of 30 steps: the model as it was then is written" in err and "Traceback" not in err
    assert f"vckit finetune --resume --out {tmp_path / 'cli'} trains the rest" in err
    assert (tmp_path / "cli" / "config.json").is_file()

    # --resume trains the other 26 steps from the 4 done, with the run's own settings and data, and replaces its output
    monkeypatch.setattr(FineTuner, "train_step", step)
    started = []
    init = FineTuner.run

    def run(self, **kw):
        started.append(self.step)
        return init(self, **kw)

    monkeypatch.setattr(FineTuner, "run", run)
    assert vckit_main(["finetune", "--resume", "--out", str(tmp_path / "cli"), "--bank", str(bank), "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    assert started == [4]
    rec = read_meta(tmp_path / "cli")["finetune"]
    assert rec["steps_done"] == 30 and rec["interrupted"] is False and rec["steps"] == 30 and rec["batch_size"] == 8
    assert rec["data"] == str((voices / "sf1").resolve()) and rec["source"] == str(Path(source).resolve())
    assert load_profile(bank, "her").model_id == vckit.load(tmp_path / "cli", device="cpu", vocoder="griffinlim").model_id
    capsys.readouterr()
    assert vckit_main(["finetune", "--resume", "--out", str(tmp_path / "cli"), "--bank", str(bank), "--device", "cpu", "--quiet"]) == 2
    assert "nothing to resume: the fine-tuning in" in capsys.readouterr().err
