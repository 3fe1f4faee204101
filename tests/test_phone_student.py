"""The phone student: its look-ahead is exact, it passes gradients to its input
when frozen, it learns, its folders round-trip; the recipe config and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, record_losses
from vckit.checkpoint import WEIGHTS_FILE, write_folder
from vckit.cli import main as vckit_main
from vckit.config import AugmentConfig, DataConfig, MelConfig, to_dict
from vckit.data.features import QUANT_HI, QUANT_LO, to_uint8
from vckit.errors import CheckpointError, ConfigError
from vckit.models.phone_student import WHOLE_UTTERANCE, PhoneStudent, PhoneStudentConfig, load_student, save_student
from vckit.models.phonetic_head import soft_cross_entropy
from vckit.models.teacher import BLANK, N_CLASSES
from vckit.training.phone_student import StudentConfig, StudentTrainConfig, StudentTrainer, agreement, decoder_like, load_store, load_student_config

TINY = PhoneStudentConfig(channels=16, blocks=3, kernel=3, dilations=(1, 2))  # receptive field 11 frames


@pytest.mark.parametrize("lookahead", [0, 3, 9, WHOLE_UTTERANCE])
def test_the_lookahead_is_exact(lookahead):
    """Output frame t hears input frames t + N - R + 1 .. t + N, and no others."""
    torch.manual_seed(0)
    model = PhoneStudent(dataclasses.replace(TINY, lookahead_frames=lookahead)).eval()
    n, r, frames = model.lookahead, TINY.receptive_field, 40
    assert n == (lookahead if lookahead >= 0 else (r - 1) // 2)
    x = torch.randn(2, 80, frames)
    with torch.no_grad():
        base = model(x)
        assert base.shape == (2, N_CLASSES, frames)
        for t in (0, 12, 25):
            later = x.clone()
            later[..., t + n + 1 :] += 3 * torch.randn_like(later[..., t + n + 1 :])
            torch.testing.assert_close(model(later)[..., : t + 1], base[..., : t + 1], rtol=0, atol=0)
            first = t + n - r + 1
            if first > 0:
                earlier = x.clone()
                earlier[..., :first] += 3 * torch.randn_like(earlier[..., :first])
                torch.testing.assert_close(model(earlier)[..., t], base[..., t], rtol=0, atol=0)
            if t + n < frames:  # the last frame it may hear, it does hear
                edge = x.clone()
                edge[..., t + n] += 3.0
                assert not torch.allclose(model(edge)[..., t], base[..., t])


def test_heard_block_by_block_the_student_gives_what_it_gives_the_whole_utterance():
    """As a live model's phonetic source (StudentTeacher): with the student's look-ahead and receptive field
    inside each window, a stream's blocks get exactly the whole-utterance hidden layer (the utterance's first
    receptive field and last frames aside, where the whole-utterance mel pads by reflection)."""
    from vckit.config import StreamConfig
    from vckit.frontend import Frontend
    from vckit.models.phone_student import StudentTeacher

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, lookahead_frames=3)
    mel = MelConfig()
    teacher = StudentTeacher(PhoneStudent(cfg).eval(), mel)
    t = np.arange(int(1.5 * mel.sample_rate)) / mel.sample_rate
    wav = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    n = len(wav) // mel.hop_length
    whole = teacher.frames(wav, mel.sample_rate, n, mel.hop_length).hidden
    assert whole.shape == (n, 16) and teacher.hidden_dim == 16
    look_ms = 1000 * (3 * mel.hop_length + mel.n_fft // 2) / mel.sample_rate + 1e-6  # 58 ms: frame t + 3's window heard whole
    for ms, exact in ((look_ms, True), (20.0, False)):
        stream = StreamConfig(causal=True, teacher_lookahead_ms=ms, teacher_context_s=0.3, phonetic="student", student=cfg)
        streamed = Frontend(mel, phonetic=True, stream=stream, teacher=teacher).features(wav, n).hidden
        inner = slice(cfg.receptive_field + 2, n - 8)
        if exact:
            np.testing.assert_allclose(streamed[inner], whole[inner], atol=1e-4)
        else:  # a shorter look-ahead cuts the student's short at each block's end
            assert np.abs(streamed[inner] - whole[inner]).max() > 1e-2
    with pytest.raises(ConfigError, match="the model's mel"):
        teacher.frames(wav, 16000, n, mel.hop_length)


def test_a_frozen_student_passes_gradients_to_its_input_only(tmp_path):
    save_student(tmp_path / "s", PhoneStudent(TINY))
    student, _ = load_student(tmp_path / "s")
    assert not student.training and not any(p.requires_grad for p in student.parameters())
    mel = torch.randn(2, 80, 30, requires_grad=True)
    target = torch.softmax(torch.randn(2, 30, N_CLASSES), -1)
    soft_cross_entropy(student(mel), target).backward()
    assert mel.grad is not None and mel.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.parameters())


def test_a_student_folder_round_trips_and_refuses_what_is_not_one(tmp_path):
    torch.manual_seed(1)
    model = PhoneStudent(dataclasses.replace(TINY, lookahead_frames=3)).eval()
    x = torch.randn(1, 80, 25)
    save_student(tmp_path / "a", model, step=7, extra={"note": "x"})
    back, meta = load_student(tmp_path / "a")
    assert back.cfg == model.cfg and meta["step"] == 7 and meta["note"] == "x"
    torch.testing.assert_close(back(x), model(x))
    save_student(tmp_path / "half", model, dtype=torch.float16)
    assert WEIGHTS_FILE in json.loads((tmp_path / "half" / "config.json").read_text())["sha256"]
    half, _ = load_student(tmp_path / "half")
    torch.testing.assert_close(half(x), model(x), atol=0.05, rtol=0.05)
    # a modified weights file, another kind of folder, a config that does not fit the weights
    (tmp_path / "half" / WEIGHTS_FILE).write_bytes(b"0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        load_student(tmp_path / "half")
    write_folder(tmp_path / "judge", "verifier", {}, {WEIGHTS_FILE: model.state_dict()})
    with pytest.raises(CheckpointError, match="not a phone student"):
        load_student(tmp_path / "judge")
    cfg_path = tmp_path / "a" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["model"]["channels"] = 24
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_student(tmp_path / "a")


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="lookahead_frames"):
        PhoneStudentConfig(lookahead_frames=-2)
    with pytest.raises(ConfigError, match="n_mels"):
        StudentConfig(model=dataclasses.replace(TINY, n_mels=64))


def test_decoder_like_blurs_and_noises_only_the_share_asked_for():
    mel = torch.randn(6, 80, 32)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(decoder_like(mel, prob=0.0, blur=0.2, noise=0.1, rng=gen), mel)
    out = decoder_like(mel, prob=1.0, blur=0.2, noise=0.1, rng=gen)
    assert out.shape == mel.shape and not torch.allclose(out, mel)
    assert (out - mel).abs().mean() < mel.abs().mean()  # light: the mel is still there


# -- training on a synthetic cache -----------------------------------------
@pytest.fixture(scope="module")
def rule_cache(tmp_path_factory) -> dict:
    """A feature cache whose "teacher" is a rule on the mel: runs of frames loud in
    one of four mel bands are symbols 10..13, quiet runs the CTC blank."""
    root = tmp_path_factory.mktemp("rule_cache")
    rng = np.random.default_rng(0)
    mels, idx, p, utts, offset = [], [], [], [], 0
    for spk in range(6):
        for u in range(3):
            runs = rng.integers(0, 5, size=int(rng.integers(12, 30)))  # 4 = quiet
            labels = np.repeat(runs, 5)
            mel = np.full((len(labels), 80), -9.0) + 0.3 * rng.standard_normal((len(labels), 80))
            for band in range(4):
                mel[labels == band, 20 * band : 20 * band + 20] += 6.0
            top = np.where(labels == 4, BLANK, 10 + labels)
            mels.append(to_uint8(np.clip(mel, QUANT_LO, QUANT_HI)))
            idx.append(np.stack([top, (top + 1) % N_CLASSES, (top + 2) % N_CLASSES], 1).astype(np.uint8))
            p.append(np.tile(np.array([[230, 20, 5]], np.uint8), (len(labels), 1)))
            utts.append({"path": f"s{spk}/u{u}.wav", "speaker": f"s{spk}", "offset": offset, "frames": len(labels)})
            offset += len(labels)
    folder = root / "features"
    folder.mkdir()
    np.save(folder / "mels.npy", np.concatenate(mels))
    np.save(folder / "posteriors_idx.npy", np.concatenate(idx))
    np.save(folder / "posteriors_p.npy", np.concatenate(p))
    index = {"mel": to_dict(MelConfig()), "quant": [QUANT_LO, QUANT_HI], "frames": offset, "utterances": utts, "skipped": []}
    (folder / "index.json").write_text(json.dumps(index))
    for name, keep in (("train", lambda u: u["speaker"] != "s5"), ("valid", lambda u: u["speaker"] == "s5")):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"path": u["path"], "speaker": u["speaker"]}) + "\n" for u in utts if keep(u)))
    return {"features": folder, "train": root / "train.jsonl", "valid": root / "valid.jsonl"}


def _config(cache: dict, out_dir: Path, **train) -> StudentConfig:
    data = DataConfig(train_manifest=str(cache["train"]), valid_manifest=str(cache["valid"]), features=str(cache["features"]),
                      segment_frames=48, augment=AugmentConfig(pitch_bins=0.0))
    t = {"out_dir": str(out_dir), "batch_size": 8, "steps": 80, "lr": 1e-2, "warmup_steps": 5, "log_every": 1, "valid_every": 1000,
         "ckpt_every": 40, "amp": "none", **train}
    return StudentConfig(model=dataclasses.replace(TINY, lookahead_frames=3), data=data, train=StudentTrainConfig(**t))


def test_training_lowers_the_loss_learns_the_rule_and_resumes(rule_cache, tmp_path):
    trainer = StudentTrainer(_config(rule_cache, tmp_path / "run"), device="cpu")
    before = agreement(trainer.model, trainer.store, trainer.valid_utts)
    history = record_losses(trainer)
    trainer.run(progress=False)
    ce = np.array([h["loss/ce"] for h in history])
    assert len(ce) == 80 and ce[-10:].mean() < 0.5 * ce[:10].mean()
    after = agreement(trainer.model, trainer.store, trainer.valid_utts)
    assert after.frames == before.frames == sum(u["frames"] for u in trainer.valid_utts)
    assert after.non_blank > max(0.8, before.non_blank + 0.3) and after.all > 0.8
    assert after.non_blank <= after.non_blank_near <= agreement(trainer.model, trainer.store, trainer.valid_utts, near=4).non_blank_near
    # whole utterances batched with zero padding score as one at a time
    assert agreement(trainer.model, trainer.store, trainer.valid_utts, batch=1) == after
    resumed = StudentTrainer(_config(rule_cache, tmp_path / "run"), device="cpu", resume=True)
    assert resumed.step == 80
    for a, b in zip(trainer.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_cache_without_teacher_posteriors_is_refused(tiny_cache):
    from vckit.errors import VckitError

    with pytest.raises(VckitError, match="posteriors_idx"):
        load_store(str(tiny_cache["features"]))


def test_the_recipe_config_and_its_lookahead_variants_load():
    path = REPO_ROOT / "recipes" / "shared_dev" / "conf" / "phone_student.yaml"
    whole = load_student_config(path)
    assert whole.model.lookahead_frames == WHOLE_UTTERANCE and whole.model.lookahead == (whole.model.receptive_field - 1) // 2
    for n in (0, 3, 9):
        assert load_student_config(path, [f"model.lookahead_frames={n}"]).model.lookahead == n
    n_params = sum(p.numel() for p in PhoneStudent(whole.model).parameters())
    assert 200_000 < n_params < 2_000_000


def test_the_cli_trains_and_exports_a_student(rule_cache, tmp_path, capsys):
    cfg = tmp_path / "student.yaml"
    cfg.write_text(json.dumps(to_dict(_config(rule_cache, tmp_path / "run", steps=4, ckpt_every=1000))))
    assert vckit_main(["train-student", "--config", str(cfg), "--set", "model.lookahead_frames=0", "--device", "cpu", "--quiet"]) == 0
    assert "loss/ce=" in capsys.readouterr().out
    assert vckit_main(["train-student", "--export", str(tmp_path / "run"), str(tmp_path / "shipped")]) == 0
    student, meta = load_student(tmp_path / "shipped")
    assert student.cfg.lookahead_frames == 0 and meta["step"] == 4 and "sha256" in meta and meta["training"]["train"]["steps"] == 4
    assert vckit_main(["train-student"]) == 2  # neither --config nor --export: one line, exit code 2
