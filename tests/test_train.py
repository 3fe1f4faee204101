"""Training: the loss falls on real speech, and a resumed run is exactly the
run that was never stopped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import record_losses
from vckit.checkpoint import STATE_FILE, list_checkpoints, load_checkpoint, step_folder
from vckit.errors import VckitError
from vckit.training.losses import adversarial_weight, masked_l1
from vckit.training.loop import lr_at
from vckit.training.vc import Trainer, frames_of


def test_loss_falls_in_a_short_smoke_run(make_config, tmp_path):
    cfg = make_config("train.steps=100", "train.batch_size=16", "data.segment_frames=64", "train.valid_every=50")
    trainer = Trainer(cfg, device="cpu")
    assert trainer.cfg.model.n_speakers == 5 and len(trainer.valid_utts) == 2
    before = trainer.validate()["valid/recon_l1"]
    history = record_losses(trainer)
    last = trainer.run(progress=False)
    recon = np.array([h["loss/recon_l1"] for h in history])
    assert len(recon) == 100 and np.isfinite(recon).all()
    first, final = recon[:5].mean(), recon[-10:].mean()
    assert final < 0.75 * first, (first, final)
    after = trainer.validate()["valid/recon_l1"]
    assert after < 0.8 * before, (before, after)  # on speakers it never saw
    assert last["valid/recon_l1"] == pytest.approx(after, rel=1e-5)
    # the adversary switched on after its start step, and its terms are logged
    assert history[2]["adv/weight"] == 0.0 and history[-1]["adv/weight"] == pytest.approx(0.1)
    assert all(math.isfinite(h["adv/ce"]) for h in history)
    # the run ended with a checkpoint of its final step
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000000100"]


@pytest.mark.parametrize("term", ["content_cycle", "content_invariance"])
def test_content_code_loss_is_logged_and_falls(make_config, tmp_path, term):
    cfg = make_config("train.steps=40", "train.batch_size=8", "data.segment_frames=48", f"train.{term}=1.0", "train.valid_every=1000")
    trainer = Trainer(cfg, device="cpu")
    history = record_losses(trainer)
    trainer.run(progress=False)
    loss = np.array([h[f"loss/{term}"] for h in history])
    assert np.isfinite(loss).all() and loss[-5:].mean() < loss[:5].mean(), loss


def exact_config(make_config, out_dir, steps: int, ckpt_every: int):
    """Every source of randomness on: augmentation, VQ restarts, code noise, dropout, the adversary."""
    return make_config(
        f"train.steps={steps}",
        f"train.ckpt_every={ckpt_every}",
        "train.valid_every=10",
        "train.deterministic=true",
        "model.vq.enabled=true",
        "model.vq.codebook_size=16",
        "model.content.noise_std=0.1",
        "model.content.dropout=0.1",
        "data.augment.prob=0.8",
        out_dir=out_dir,
    )


def test_resume_is_exact(make_config, tmp_path):
    n, k = 30, 12
    # uninterrupted: n steps, checkpoints at 12 and 24 on the way
    straight = Trainer(exact_config(make_config, tmp_path / "a", n, k), device="cpu")
    hist_a = record_losses(straight)
    straight.run(progress=False)
    assert straight.step == n
    # interrupted: stop at k (a new process would start from here) ...
    first = Trainer(exact_config(make_config, tmp_path / "b", n, k), device="cpu")
    first.run(max_steps=k, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == [f"step-{k:09d}"]
    _, sd_a, _ = load_checkpoint(step_folder(tmp_path / "a", k))
    _, sd_b, _ = load_checkpoint(step_folder(tmp_path / "b", k))
    assert all(torch.equal(sd_a[key], sd_b[key]) for key in sd_a)
    del first
    # ... then a fresh trainer resumes and runs to n
    torch.manual_seed(999)  # whatever the global RNG holds now must not matter
    resumed = Trainer(exact_config(make_config, tmp_path / "b", n, k), device="cpu", resume=True)
    assert resumed.step == k
    hist_b = record_losses(resumed)
    resumed.run(progress=False)
    assert resumed.step == n
    assert len(hist_b) == n - k
    # the next step's loss, and every one after, is the uninterrupted run's
    for name in ("loss/total", "loss/recon_l1", "loss/vq_commit", "adv/ce"):
        a = np.array([h[name] for h in hist_a[k:]])
        b = np.array([h[name] for h in hist_b])
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=name)
    # and the final parameters and buffers (the VQ codebook too) match
    final_a = straight.model.state_dict()
    final_b = resumed.model.state_dict()
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], rtol=1e-6, atol=1e-7, msg=key)
    # the optimiser moments too
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in opt_a:
        torch.testing.assert_close(opt_b[i]["exp_avg"], opt_a[i]["exp_avg"], rtol=1e-6, atol=1e-8)


def test_resume_without_a_checkpoint_starts_fresh(make_config, tmp_path):
    trainer = Trainer(make_config("train.steps=3", out_dir=tmp_path / "fresh"), device="cpu", resume=True)
    assert trainer.step == 0
    trainer.run(progress=False)
    ck = list_checkpoints(tmp_path / "fresh")
    assert [p.name for p in ck] == ["step-000000003"] and (ck[0] / STATE_FILE).is_file()


def test_resume_refuses_another_model(make_config, tmp_path):
    Trainer(make_config("train.steps=2", out_dir=tmp_path / "r"), device="cpu").run(progress=False)
    other = make_config("train.steps=4", "model.decoder.channels=16", out_dir=tmp_path / "r")
    with pytest.raises(VckitError, match="another model"):
        Trainer(other, device="cpu", resume=True)


def test_keep_last_prunes_old_checkpoints(make_config, tmp_path):
    Trainer(make_config("train.steps=8", "train.ckpt_every=2", "train.keep_last=2", out_dir=tmp_path / "k"), device="cpu").run(progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "k")] == ["step-000000006", "step-000000008"]
    assert not list((tmp_path / "k").glob("*.tmp-*"))


def test_wrong_speaker_count_and_missing_files(make_config, tmp_path):
    with pytest.raises(VckitError, match="3 training speakers"):
        Trainer(make_config("model.n_speakers=3"), device="cpu")
    manifest = tmp_path / "other.jsonl"
    manifest.write_text('{"path": "/not/cached.wav", "speaker": "x"}\n')
    with pytest.raises(VckitError, match="none of the files in .* are in the feature cache"):
        Trainer(make_config(f"data.train_manifest={manifest}"), device="cpu")


def test_unwritable_output_folder(make_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    trainer = Trainer(make_config("train.steps=1", out_dir=blocker / "run"), device="cpu")
    with pytest.raises(VckitError, match="cannot write to the output folder"):
        trainer.run(progress=False)


def test_lr_schedule():
    from vckit.config import TrainConfig

    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)
    timed = TrainConfig(lr=1.0, warmup_steps=0, time_budget=100.0, min_lr_ratio=0.0)
    assert lr_at(5, timed, elapsed=50.0) == pytest.approx(0.5)


def test_a_cooldown_holds_the_peak_then_falls_linearly():
    """Warm-up, stable, decay: what conf/cooldown.yaml does to a branch of the background run."""
    from vckit.config import TrainConfig

    cfg = TrainConfig(lr=1e-4, warmup_steps=0, steps=3665, cooldown_steps=2000, min_lr_ratio=0.0)
    assert lr_at(1000, cfg) == pytest.approx(1e-4) and lr_at(1665, cfg) == pytest.approx(1e-4)
    assert lr_at(2665, cfg) == pytest.approx(0.5e-4)
    assert lr_at(3664, cfg) == pytest.approx(0.5e-7) and lr_at(3665, cfg) == 0.0 and lr_at(4000, cfg) == 0.0


def test_loss_helpers():
    assert adversarial_weight(3, 0.1, 5, 10) == 0.0
    assert adversarial_weight(10, 0.1, 5, 10) == pytest.approx(0.05)
    assert adversarial_weight(100, 0.1, 5, 10) == pytest.approx(0.1)
    assert adversarial_weight(5, 0.1, 5, 0) == pytest.approx(0.1)
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    target[:, :, 2:] = 5.0
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    assert masked_l1(pred, target, mask) == pytest.approx(1.0)  # masked frames do not count
    assert masked_l1(pred, target) == pytest.approx(3.0)


# -- the F0 path, phonetic input and distillation, the mel discriminator -----------
@pytest.fixture(scope="module")
def featured_cache(tiny_cache, tmp_path_factory):
    """The tiny cache with F0, phonetic features (16 dims) and teacher posteriors."""
    import shutil

    from vckit.data.frame_features import cache_frame_features

    folder = tmp_path_factory.mktemp("featured") / "features"
    shutil.copytree(tiny_cache["features"], folder)
    cache_frame_features(folder, dims=16, top_k=3, progress=False)
    return folder


def test_a_model_with_every_new_part_trains_and_resumes(make_config, featured_cache, tmp_path):
    overrides = [
        f"data.features={featured_cache}", "data.augment.pitch_bins=0", "train.batch_size=8", "data.segment_frames=48",
        "model.f0.enabled=true", "model.content.input=phonetic", "model.content.input_dim=16",
        "model.phonetic_head.enabled=true", "model.phonetic_head.channels=16", "train.phonetic_kl=1.0",
        "model.discriminator.enabled=true", "model.discriminator.channels=8", "model.discriminator.layers=2",
        "train.mel_gan=0.1", "train.feature_matching=0.3", "train.gan_start_step=5", "train.gan_on_conversions=true", "train.valid_every=1000",
    ]
    trainer = Trainer(make_config("train.steps=40", "train.ckpt_every=20", *overrides), device="cpu")
    proj = trainer.model.content_encoder.teacher_proj
    assert proj.abs().sum() > 0  # the cache's projection went into the model
    history = record_losses(trainer)
    trainer.run(progress=False)
    recon = np.array([h["loss/recon_l1"] for h in history])
    ce = np.array([h["loss/phonetic_ce"] for h in history])
    assert recon[-5:].mean() < recon[:5].mean() and ce[-5:].mean() < ce[:5].mean()
    assert "gan/g" not in history[2] and "gan/g" in history[-1] and math.isfinite(history[-1]["gan/fm"])
    # the discriminator is saved with the run and restored on resume
    resumed = Trainer(make_config("train.steps=40", "train.ckpt_every=20", *overrides), device="cpu", resume=True)
    assert resumed.step == 40
    for a, b in zip(trainer.disc.state_dict().values(), resumed.disc.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(resumed.model.content_encoder.teacher_proj, proj)


def test_a_live_model_trains_on_a_students_streamed_features_and_carries_the_student(make_config, featured_cache, tmp_path, monkeypatch, speech):
    """prepare stream-features --student, then a causal model reading them: the trainer copies the student that
    made them into the model, which converts with it and no hama; a changed student or a model that reads hama
    is refused."""
    import vckit
    from vckit.checkpoint import WEIGHTS_FILE, latest_checkpoint
    from vckit.config import PhoneStudentConfig
    from vckit.data.stream_features import build, student_stream
    from vckit.models import teacher
    from vckit.models.phone_student import PhoneStudent, StudentTeacher, save_student

    torch.manual_seed(0)
    student = PhoneStudent(PhoneStudentConfig(channels=24, blocks=2, kernel=3, dilations=(1, 2), lookahead_frames=2))
    folder = save_student(tmp_path / "student", student)
    feats = tmp_path / "features_student"
    summary = build(featured_cache, feats, student_stream(folder, teacher_lookahead_ms=50.0, teacher_context_s=0.5), student=folder, progress=False)
    assert summary["phonetic"] == "student" and 0 < summary["explained_variance"] <= 1
    overrides = [
        f"data.features={feats}", "data.augment.pitch_bins=0", "train.batch_size=4", "data.segment_frames=48", "model.f0.enabled=true",
        "model.content.input=phonetic+mel", "model.content.input_dim=16", "model.stream.causal=true", "model.stream.phonetic=student",
        "model.stream.teacher_lookahead_ms=50.0", "model.stream.teacher_context_s=0.5", "model.stream.student.channels=24",
        "model.stream.student.blocks=2", "model.stream.student.kernel=3", "model.stream.student.dilations=[1, 2]",
        "model.stream.student.lookahead_frames=2", "train.steps=4", "train.ckpt_every=4",
    ]
    trainer = Trainer(make_config(*overrides), device="cpu")
    enc = trainer.model.content_encoder
    assert enc.teacher_proj.shape == (16, 24) and enc.teacher_proj.abs().sum() > 0
    for k, v in student.state_dict().items():
        torch.testing.assert_close(enc.student.state_dict()[k], v)
    trainer.run(progress=False)
    for k, v in student.state_dict().items():  # frozen
        torch.testing.assert_close(enc.student.state_dict()[k], v)
    monkeypatch.setattr(teacher.PhoneticTeacher, "__init__", lambda *a, **k: pytest.fail("hama was loaded"))
    vc = vckit.load(latest_checkpoint(tmp_path / "run"), vocoder="griffinlim", device="cpu")
    assert isinstance(vc.teacher, StudentTeacher)
    assert np.isfinite(vc.convert(speech, target=vc.voice(speech))).all()
    with pytest.raises(VckitError, match="made block by block"):  # a model that reads hama, on the student's features
        Trainer(make_config(*overrides[:8], "train.steps=4", out_dir=tmp_path / "hama"), device="cpu")
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:-4] + b"    ")  # retrained since
    with pytest.raises(VckitError, match="no longer"):
        Trainer(make_config(*overrides, out_dir=tmp_path / "again"), device="cpu")


def test_a_cache_without_the_features_a_model_needs_is_refused(make_config):
    with pytest.raises(VckitError, match="f0"):
        Trainer(make_config("model.f0.enabled=true"), device="cpu")


def test_resume_with_init_from_warm_starts_once_then_resumes(make_config, tmp_path):
    """``--resume --init-from X``: the first start takes X's weights, every later one the run's own."""
    from vckit.checkpoint import latest_checkpoint

    Trainer(make_config("train.steps=3", out_dir=tmp_path / "donor"), device="cpu").run(progress=False)
    donor = latest_checkpoint(tmp_path / "donor")
    _, donor_sd, _ = load_checkpoint(donor)
    cfg = make_config("train.steps=5", "train.ckpt_every=2", out_dir=tmp_path / "bg")
    first = Trainer(cfg, device="cpu", resume=True, init_from=str(donor))
    assert first.step == 0
    _, _, donor_meta = load_checkpoint(donor)  # the lineage's CPU hours go on from the donor's
    assert donor_meta["training_cpu_hours"] > 0 and first.cpu_seconds == pytest.approx(3600 * donor_meta["training_cpu_hours"])
    for k, v in first.model.state_dict().items():
        torch.testing.assert_close(v, donor_sd[k], msg=k)
    first.run(max_steps=2, progress=False)
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    again = Trainer(cfg, device="cpu", resume=True, init_from=str(donor))
    assert again.step == 2
    for k, v in again.model.state_dict().items():
        torch.testing.assert_close(v, trained[k], msg=k)


def test_init_from_a_training_checkpoint_takes_its_mel_discriminator(make_config, tmp_path):
    """A branch warm-started from a step folder keeps the donor's mel discriminator (and its optimizer, at this run's
    rate); from a shipped model, which has none, the discriminator starts afresh."""
    from vckit.checkpoint import latest_checkpoint
    from vckit.models.vc import export_for_inference

    gan = ["model.discriminator.enabled=true", "model.discriminator.channels=8", "model.discriminator.layers=2", "train.mel_gan=0.1",
           "train.gan_start_step=0"]
    donor_run = Trainer(make_config("train.steps=3", *gan, out_dir=tmp_path / "donor"), device="cpu")
    fresh = {k: v.clone() for k, v in donor_run.disc.state_dict().items()}
    donor_run.run(progress=False)
    donor = latest_checkpoint(tmp_path / "donor")
    trained = donor_run.disc.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    branch = Trainer(make_config("train.steps=5", "train.lr=3e-4", *gan, out_dir=tmp_path / "branch"), device="cpu", init_from=str(donor))
    for k, v in branch.disc.state_dict().items():
        torch.testing.assert_close(v, trained[k], msg=k)
    assert branch.disc_opt.state and all(g["lr"] == 3e-4 for g in branch.disc_opt.param_groups)
    branch.run(progress=False)
    shipped = export_for_inference(donor, tmp_path / "shipped")
    torch.manual_seed(0)
    afresh = Trainer(make_config("train.steps=5", *gan, out_dir=tmp_path / "afresh"), device="cpu", init_from=str(shipped))
    assert not afresh.disc_opt.state and any(not torch.equal(v, trained[k]) for k, v in afresh.disc.state_dict().items())


def test_speaker_from_shares_a_frozen_speaker_encoder(make_config, tmp_path):
    """train.speaker_from: the model starts with that checkpoint's speaker encoder and never changes it."""
    from vckit.checkpoint import latest_checkpoint

    Trainer(make_config("train.steps=2", out_dir=tmp_path / "donor"), device="cpu").run(progress=False)
    donor = latest_checkpoint(tmp_path / "donor")
    _, donor_sd, _ = load_checkpoint(donor)
    trainer = Trainer(make_config("train.steps=3", f"train.speaker_from={donor}", out_dir=tmp_path / "shared"), device="cpu")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(progress=False)
    after = trainer.model.state_dict()
    for k, v in after.items():
        if k.startswith("speaker_encoder."):
            torch.testing.assert_close(v, donor_sd[k], msg=k)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("decoder."))


def test_threads_file_sets_the_cpu_threads_and_a_bad_one_is_ignored(make_config, tmp_path, caplog):
    out = tmp_path / "t"
    out.mkdir()
    (out / "THREADS").write_text("1\n")
    torch.set_num_threads(2)
    Trainer(make_config("train.steps=2", "train.log_every=1", out_dir=out), device="cpu").run(progress=False)
    assert torch.get_num_threads() == 1
    (out / "THREADS").write_text("all of them")
    torch.set_num_threads(2)
    with caplog.at_level("WARNING"):
        Trainer(make_config("train.steps=2", "train.log_every=1", out_dir=out), device="cpu").run(progress=False)
    assert torch.get_num_threads() == 2
    assert "whole number of threads" in caplog.text
    # a running job follows a change of the file at its next logged step, not only at its start
    (out / "THREADS").unlink()
    trainer = Trainer(make_config("train.steps=4", "train.log_every=1", "train.valid_every=1000", out_dir=tmp_path / "t2"), device="cpu")
    step = trainer.train_step

    def step_then_write() -> dict:
        stats = step()
        if trainer.step == 1:
            (tmp_path / "t2" / "THREADS").write_text("1")
        return stats

    trainer.train_step = step_then_write  # type: ignore[method-assign]
    torch.set_num_threads(2)
    trainer.run(progress=False)
    assert torch.get_num_threads() == 1


def test_ckpt_minutes_saves_by_wall_time_and_cpu_time_is_kept(make_config, tmp_path):
    out = tmp_path / "m"
    trainer = Trainer(make_config("train.steps=3", "train.ckpt_every=1000", "train.ckpt_minutes=1e-9", "train.keep_last=10", out_dir=out), device="cpu")
    trainer.run(progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-000000001", "step-000000002", "step-000000003"]
    resumed = Trainer(make_config("train.steps=3", out_dir=out), device="cpu", resume=True)
    assert resumed.cpu_seconds == pytest.approx(trainer.cpu_seconds) and resumed.cpu_seconds > 0


def test_bf16_autocast_trains_with_the_discriminator(make_config, featured_cache):
    overrides = [
        f"data.features={featured_cache}", "data.augment.pitch_bins=0", "train.batch_size=4", "data.segment_frames=32",
        "model.f0.enabled=true", "model.content.input=phonetic", "model.content.input_dim=16",
        "model.discriminator.enabled=true", "model.discriminator.channels=8", "model.discriminator.layers=2",
        "train.mel_gan=0.1", "train.feature_matching=0.3", "train.gan_on_conversions=true", "train.amp=bf16",
    ]
    trainer = Trainer(make_config("train.steps=3", *overrides), device="cpu")
    history = record_losses(trainer)
    trainer.run(progress=False)
    assert all(math.isfinite(h["loss/total"]) and math.isfinite(h["gan/d"]) for h in history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast: the weights stay fp32


def test_ema_is_kept_resumed_and_exported(make_config, tmp_path):
    from vckit.checkpoint import latest_checkpoint
    from vckit.models.vc import export_for_inference

    cfg = make_config("train.steps=4", "train.ckpt_every=2", "train.ema=0.5", out_dir=tmp_path / "e")
    trainer = Trainer(cfg, device="cpu")
    start = {k: v.clone() for k, v in trainer.ema.items()}
    trainer.run(max_steps=2, progress=False)
    weights = trainer.model.state_dict()
    moved = [k for k in start if not torch.equal(start[k], weights[k].float())]
    assert moved
    for k in moved:  # the average lies between where the run started and where it is
        assert not torch.equal(trainer.ema[k], weights[k].float())
    resumed = Trainer(cfg, device="cpu", resume=True)
    for k, v in trainer.ema.items():
        torch.testing.assert_close(resumed.ema[k], v, msg=k)
    ck = latest_checkpoint(tmp_path / "e")
    out = export_for_inference(ck, tmp_path / "ship", dtype=torch.float32, ema=True)
    _, shipped, meta = load_checkpoint(out)
    k = next(k for k in moved if k in shipped)
    torch.testing.assert_close(shipped[k], trainer.ema[k])
    assert "moving average" in meta["weights"]
    plain = Trainer(make_config("train.steps=2", out_dir=tmp_path / "p"), device="cpu")
    plain.run(progress=False)
    with pytest.raises(VckitError, match="moving average"):
        export_for_inference(latest_checkpoint(tmp_path / "p"), tmp_path / "ship2", ema=True)


def test_averaged_checkpoint_holds_the_mean_of_its_sources_and_refuses_other_models(make_config, tmp_path):
    from vckit.checkpoint import latest_checkpoint
    from vckit.models.vc import average_for_inference

    runs = []
    for i, steps in enumerate((1, 3)):
        Trainer(make_config(f"train.steps={steps}", out_dir=tmp_path / f"r{i}"), device="cpu").run(progress=False)
        runs.append(latest_checkpoint(tmp_path / f"r{i}"))
    out = average_for_inference(runs, tmp_path / "soup", dtype=torch.float32)
    _, soup, meta = load_checkpoint(out)
    (_, a, _), (_, b, _) = (load_checkpoint(r) for r in runs)
    differ = [k for k in soup if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert differ  # the two runs left different weights, and the soup lies halfway
    for k in differ:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, msg=k)
    assert not any(k.startswith("classifier.") for k in soup)  # an inference checkpoint
    assert meta["averaged_from"] == [str(r) for r in runs]
    from vckit import load

    load(out)  # it serves conversions
    Trainer(make_config("train.steps=1", "model.content.dim=4", out_dir=tmp_path / "other"), device="cpu").run(progress=False)
    with pytest.raises(VckitError, match="another model"):
        average_for_inference([runs[0], latest_checkpoint(tmp_path / "other")], tmp_path / "bad")
    with pytest.raises(VckitError, match="at least two"):
        average_for_inference(runs[:1], tmp_path / "one")


def test_phone_loss_trains_the_decoder_through_a_frozen_student(make_config, featured_cache, tmp_path):
    from vckit.models.phone_student import PhoneStudent, PhoneStudentConfig, save_student

    student = PhoneStudent(PhoneStudentConfig(channels=8, blocks=1, lookahead_frames=2))
    folder = save_student(tmp_path / "student", student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    overrides = [
        f"data.features={featured_cache}", "data.augment.pitch_bins=0", "train.batch_size=4", "data.segment_frames=32",
        "model.f0.enabled=true", "model.discriminator.enabled=true", "model.discriminator.channels=8", "model.discriminator.layers=2",
        "train.mel_gan=0.1", "train.gan_on_conversions=true", f"train.phone_student={folder}", "train.phone_loss=1.0",
    ]
    trainer = Trainer(make_config("train.steps=3", *overrides), device="cpu")
    history = record_losses(trainer)
    trainer.run(progress=False)
    assert all(math.isfinite(h["loss/phone_student"]) and h["loss/phone_student"] > 0 for h in history)
    for k, v in trainer.student.state_dict().items():  # frozen: only the decoder learns from it
        torch.testing.assert_close(v, before[k].to(v.dtype), msg=k)
    # a gradient reaches the decoder from the student's loss alone
    trainer.model.zero_grad(set_to_none=True)
    batch = trainer._batch()
    out = trainer.model(frames_of(batch), batch["ref"], convert=True)
    trainer._phone_loss(out, batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.decoder.parameters())
    with pytest.raises(VckitError, match="normalised otherwise"):
        other = save_student(tmp_path / "other", PhoneStudent(PhoneStudentConfig(channels=8, blocks=1, mel_mean=-4.0)))
        Trainer(make_config("train.steps=3", *overrides[:-2], f"train.phone_student={other}", "train.phone_loss=1.0"), device="cpu")
    with pytest.raises(VckitError, match="phone_student"):
        Trainer(make_config("train.steps=3", *overrides[:-2], "train.phone_loss=1.0"), device="cpu")


def test_voice_consistency_teaches_the_decoder_and_leaves_the_speaker_encoder_still(make_config, featured_cache, tmp_path):
    overrides = [
        f"data.features={featured_cache}", "data.augment.pitch_bins=0", "train.batch_size=4", "data.segment_frames=32",
        "model.f0.enabled=true", "train.voice_consistency=1.0",
    ]
    trainer = Trainer(make_config("train.steps=3", *overrides), device="cpu")
    history = record_losses(trainer)
    trainer.run(progress=False)  # no discriminator: the term alone makes the run decode conversions
    assert all(0 < h["loss/voice_consistency"] <= 2 for h in history)
    # the term's gradient reaches the decoded mels, never the encoder's weights that judge them
    trainer.model.zero_grad(set_to_none=True)
    batch = trainer._batch()
    with torch.no_grad():
        out = trainer.model(frames_of(batch), batch["ref"], convert=True)
    decoded = out.converted.clone().requires_grad_(True)
    out.converted = decoded
    trainer._voice_consistency(out).backward()
    assert decoded.grad is not None and decoded.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.model.speaker_encoder.parameters())
    # and a conversion decoded in its own target's voice scores better than one given another's embedding
    with torch.no_grad():
        own = trainer.model.embed_speaker(trainer.model.denormalize(out.converted))
        out.converted_speaker = own
        matched = float(trainer._voice_consistency(out))
        out.converted_speaker = own.roll(1, 0)
        crossed = float(trainer._voice_consistency(out))
    assert matched < 1e-3 < crossed, (matched, crossed)


def test_the_envelope_only_voice_term_keeps_its_value_and_spreads_its_gradient_over_neighbouring_bins():
    from vckit.training.losses import envelope_gradient

    mel = torch.randn(2, 12, 7, requires_grad=True)
    out = envelope_gradient(mel, 5)
    assert torch.allclose(out, mel, atol=1e-6)
    pick = torch.zeros_like(mel)
    pick[:, 6, 3] = 1.0  # a loss that would sharpen one bin of one frame
    (out * pick).sum().backward()
    grad = mel.grad[0, :, 3]
    assert torch.allclose(grad[4:9], torch.full((5,), 0.2)) and grad[:4].abs().sum() == 0 and grad[9:].abs().sum() == 0
    assert mel.grad[:, :, [0, 1, 2, 4, 5, 6]].abs().sum() == 0  # frames stay apart
    assert envelope_gradient(mel, 1) is mel


def test_grow_branches_a_run_into_a_model_with_new_parts_that_resumes_where_it_was(make_config, featured_cache, tiny_cache, tmp_path):
    """recipes/shared_dev/grow.py: a run with the harmonic prior added starts from the old run's weights, moments,
    moving average and step, converts exactly as before (the new layers are zero), and trains on."""
    import importlib.util

    from conftest import REPO_ROOT
    from vckit.frontend import Frames
    from vckit.models.vc import build_model

    spec = importlib.util.spec_from_file_location("grow", REPO_ROOT / "recipes" / "shared_dev" / "grow.py")
    grow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grow)
    base = [f"data.features={featured_cache}", "data.augment.pitch_bins=0", "model.f0.enabled=true", "train.ema=0.9"]
    old = Trainer(make_config("train.steps=4", "train.ckpt_every=4", *base, out_dir=tmp_path / "old"), device="cpu")
    old.run(progress=False)
    src = step_folder(tmp_path / "old", 4)
    new = [*base, "model.f0.harmonic_prior=true", "train.steps=6", f"train.out_dir={tmp_path / 'new'}"]
    argv = ["--from", str(src), "--out", str(tmp_path / "new"), "--config", str(tiny_cache["yaml"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["grow.py", *argv, *(a for kv in new for a in ("--set", kv))])
        assert grow.main() == 0
        assert grow.main() == 1  # the step folder exists now: never overwritten
    cfg_new, sd_new, _ = load_checkpoint(step_folder(tmp_path / "new", 4))
    cfg_old, sd_old, _ = load_checkpoint(src)
    assert set(sd_new) - set(sd_old) == {"decoder.harm_in.weight", "decoder.harm_in.bias", "decoder.harm_late.weight", "decoder.harm_late.bias"}
    a, b = build_model(cfg_old, sd_old).eval(), build_model(cfg_new, sd_new).eval()
    torch.manual_seed(0)
    frames = Frames(mel=torch.randn(1, cfg_old.mel.n_mels, 40), f0=torch.full((1, 40), 180.0))
    spk = torch.nn.functional.normalize(torch.randn(1, cfg_old.model.speaker.dim), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(b.convert(frames, spk), a.convert(frames, spk))
    grown = Trainer(make_config(*new[:-1], out_dir=tmp_path / "new"), device="cpu", resume=True)
    assert grown.step == 4 and grown.cpu_seconds == pytest.approx(old.cpu_seconds)
    moments = {n: grown.optimizer.state[p]["exp_avg"] for n, p in grown.model.named_parameters() if p in grown.optimizer.state}
    for n, p in old.model.named_parameters():
        if p in old.optimizer.state:
            torch.testing.assert_close(moments[n], old.optimizer.state[p]["exp_avg"], msg=n)
    assert "decoder.harm_in.weight" not in moments and "decoder.harm_in.weight" in grown.ema
    grown.run(progress=False)
    assert grown.step == 6 and grown.model.decoder.harm_in.weight.abs().sum() > 0  # the new layers learn
    # wider content codes: the old codes fill the leading channels, the decoder and the adversary read the new ones
    # with zero weights, so the wider model converts as the narrow one did; it resumes and trains on
    dim = 2 * cfg_old.model.content.dim
    wide = [*base, f"model.content.dim={dim}", "train.steps=6", f"train.out_dir={tmp_path / 'wide'}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["grow.py", *argv[:3], str(tmp_path / "wide"), *argv[4:], *(a for kv in wide for a in ("--set", kv))])
        assert grow.main() == 0
    cfg_w, sd_w, _ = load_checkpoint(step_folder(tmp_path / "wide", 4))
    assert sd_w["decoder.inp.weight"].shape[1] == dim and sd_w["decoder.inp.weight"][:, dim // 2:].abs().sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(build_model(cfg_w, sd_w).eval().convert(frames, spk), a.convert(frames, spk))
    widened = Trainer(make_config(*wide[:-1], out_dir=tmp_path / "wide"), device="cpu", resume=True)
    adam = widened.optimizer.state[widened.model.decoder.inp.weight]
    torch.testing.assert_close(adam["exp_avg"][:, : dim // 2], old.optimizer.state[old.model.decoder.inp.weight]["exp_avg"])
    assert adam["exp_avg_sq"][:, dim // 2:].min() > 0  # new entries start at the tensor's mean second moment
    widened.run(progress=False)
    assert widened.step == 6 and widened.model.decoder.inp.weight[:, dim // 2:].abs().sum() > 0
