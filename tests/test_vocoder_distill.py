"""Distilling the fast vocoder from a teacher: the teacher cache, its windows, the phase-aware loss, the trainer."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vckit.audio import MelSpectrogram, load_audio, log_mel
from vckit.checkpoint import load_train_state
from vckit.cli import main as vckit_main
from vckit.config import MelConfig
from vckit.data.distill import TeacherSampler, TeacherStore, write_teacher_cache
from vckit.errors import ConfigError, VckitError
from vckit.models.vocoder import Vocos, VocosConfig, load_vocoder
from vckit.training.losses import TeacherSpectralLoss
from vckit.training.vocoder import VocoderTrainer, load_vocoder_config

MEL = MelConfig()
HOP = MEL.hop_length
TINY_GEN = VocosConfig(dim=32, intermediate_dim=64, layers=2)


def _rows(data_dir: Path, speakers: tuple[str, ...], split: str) -> list[dict]:
    return [{"path": str(data_dir / "vcc2016" / s / "100001.wav"), "speaker": s, "split": split, "kind": "real"} for s in speakers]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Real speech's mels (three training speakers, one held out), voiced by a fixed random tiny Vocos: a teacher
    that is cheap and, like HiFi-GAN, a deterministic function of the mel."""
    torch.manual_seed(7)
    teacher = Vocos(TINY_GEN, MEL).eval()
    rows = _rows(data_dir, ("SF1", "SM1", "TF1"), "train") + _rows(data_dir, ("TM1",), "valid")
    items = ((r, log_mel(load_audio(r["path"], MEL.sample_rate), MEL).numpy()) for r in rows)

    def voice(mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(mel)[None])[0].numpy()

    out = tmp_path_factory.mktemp("teacher_cache")
    write_teacher_cache(items, out, voice, sample_rate=MEL.sample_rate, hop=HOP, teacher_name="tiny vocos")
    return out


def test_windows_give_each_mel_frame_with_the_teachers_samples_under_it(tmp_path):
    # a teacher that writes each frame's first mel value into its hop of samples shows any misalignment
    mels = [np.full((80, n), 0.0, np.float32) + np.arange(n, dtype=np.float32)[None] / 200 + u / 4 for u, n in enumerate((40, 25, 60))]
    items = (({"path": f"u{u}", "split": "train"}, m) for u, m in enumerate(mels))
    index = write_teacher_cache(items, tmp_path, lambda m: np.repeat(m[0], HOP), sample_rate=MEL.sample_rate, hop=HOP, teacher_name="ramp")
    assert index["frames"] == 125 and [u["frame"] for u in index["utterances"]] == [0, 40, 65]
    with pytest.raises(VckitError, match="exists and is not empty"):  # nothing a user made is overwritten
        write_teacher_cache(iter([({"path": "x"}, mels[0])]), tmp_path, lambda m: np.repeat(m[0], HOP), sample_rate=MEL.sample_rate, hop=HOP, teacher_name="ramp")
    store = TeacherStore.load(tmp_path, sample_rate=MEL.sample_rate, hop=HOP, n_mels=80)
    sampler = TeacherSampler(store, store.split("train"), segment=20, context=4, seed=0)
    mel, wave = sampler.sample(64)
    assert mel.shape == (64, 80, 28) and wave.shape == (64, 28 * HOP)
    under = wave[:, ::HOP]  # the first sample under each frame
    assert torch.allclose(under, mel[:, 0], atol=1e-3)
    assert set((mel[:, 0, 0] * 4).floor().int().tolist()) == {0, 2}  # the 25-frame utterance is too short for a window
    steps = torch.diff(mel[:, 0], dim=1)
    assert torch.allclose(steps, torch.full_like(steps, 5e-3), atol=1e-3)  # never across two utterances


def test_a_cache_for_another_front_end_or_a_damaged_one_is_refused(tmp_path, teacher_cache):
    with pytest.raises(VckitError, match="made for"):
        TeacherStore.load(teacher_cache, sample_rate=16000, hop=HOP, n_mels=80)
    with pytest.raises(VckitError, match="no teacher cache"):
        TeacherStore.load(tmp_path, sample_rate=MEL.sample_rate, hop=HOP, n_mels=80)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text(json.dumps({**json.loads((teacher_cache / "index.json").read_text()), "frames": 3}))
    for name in ("mels.npy", "teacher.npy"):
        (broken / name).write_bytes((teacher_cache / name).read_bytes())
    with pytest.raises(VckitError, match="disagree with its index"):
        TeacherStore.load(broken, sample_rate=MEL.sample_rate, hop=HOP, n_mels=80)


def test_the_phase_loss_hears_the_shift_that_the_mel_cannot_and_the_magnitude_loss_the_level():
    t = torch.arange(40 * HOP) / MEL.sample_rate
    a = 0.3 * torch.sin(2 * math.pi * 220 * t)[None]
    late = 0.3 * torch.sin(2 * math.pi * 220 * t + math.pi / 2)[None]  # the same tone a quarter period later
    loss, mel = TeacherSpectralLoss(MEL), MelSpectrogram(MEL)
    assert [float(x) for x in loss(a, a, 4, 30)] == pytest.approx([0.0, 0.0], abs=1e-6)
    # to the front-end's mel the shift is less than a 3 dB change of level
    mel_far = {name: float((mel(a) - mel(y))[..., 4:34].abs().mean()) for name, y in (("late", late), ("quieter", 0.7 * a))}
    assert mel_far["late"] < mel_far["quieter"]
    shifted, quieter = loss(late, a, 4, 30), loss(0.7 * a, a, 4, 30)
    assert float(shifted[1]) > 100 * float(quieter[1])  # the phase term hears the quarter turn, not the level
    assert float(quieter[0]) > 0
    with pytest.raises(ValueError, match="need samples"):
        loss(a, late, 1, 30)  # frame 1 reaches 128 samples before the signal


def _distill_config(tmp_path: Path, cache: Path, **loss: object):
    d = {"generator": dataclasses.asdict(TINY_GEN),
         "discriminator": {"periods": [2], "period_channels": [4, 8], "resolutions": [[512, 128, 512]], "resolution_channels": 4},
         "loss": {"mel_resolutions": [[512, 128, 40], [1024, 256, 80]], "spectral_weight": 45.0, "phase_weight": 20.0, "adv_weight": 0.0, **loss},
         "data": {"teacher": str(cache), "segment": 16 * HOP, "context_frames": 4, "valid_utterances": 1, "valid_seconds": 2.0},
         "train": {"out_dir": str(tmp_path / "run"), "batch_size": 4, "steps": 60, "lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 1.0,
                   "disc_start_step": 1000, "amp": "none", "log_every": 1000, "valid_every": 1000, "ckpt_every": 1000}}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_distillation_brings_the_student_towards_the_teacher(tmp_path, teacher_cache):
    torch.manual_seed(0)
    trainer = VocoderTrainer(load_vocoder_config(_distill_config(tmp_path, teacher_cache)), device="cpu")
    assert trainer.valid_utts[0]["speaker"] == "TM1"  # validation is on the held-out speaker
    before = trainer.validate()["valid/mel_l1"]
    stats = [trainer.train_step() for _ in range(60)]
    assert float(stats[-1]["loss/spectral"]) < float(stats[0]["loss/spectral"])
    assert float(stats[-1]["loss/phase"]) < float(stats[0]["loss/phase"])
    assert trainer.validate()["valid/mel_l1"] < 0.8 * before


def test_stream_edge_ends_windows_early_as_the_live_path_does_and_the_losses_read_the_same_segment(tmp_path, teacher_cache):
    class Recorder(torch.nn.Module):  # the student's inputs, as the trainer hands them over
        def __init__(self, generator: torch.nn.Module):
            super().__init__()
            self.generator, self.widths = generator, []

        def forward(self, mel: torch.Tensor, clamp: bool = True) -> torch.Tensor:
            self.widths.append(mel.shape[-1])
            return self.generator(mel, clamp=clamp)

    widths = {}
    for edge in (0.0, 1.0, 0.5):
        torch.manual_seed(0)
        trainer = VocoderTrainer(load_vocoder_config(_distill_config(tmp_path, teacher_cache), [f"data.stream_edge={edge}"]), device="cpu")
        trainer.gen_net = Recorder(trainer.generator)
        spans = []

        def spectral(fake, real, first, frames, loss=trainer.spectral_loss):  # the frames the STFT losses read
            spans.append((first, frames, fake.shape[1] == real.shape[1]))
            return loss(fake, real, first, frames)

        trainer.spectral_loss = spectral
        stats = [trainer.train_step() for _ in range(24)]
        assert all(math.isfinite(float(s["loss/gen_total"])) for s in stats)
        assert set(spans) == {(4, 16, True)}  # whatever the cut, the STFT losses read the same 16 frames after the context
        widths[edge] = trainer.gen_net.widths
    assert set(widths[0.0]) == {4 + 16 + 4}  # context, segment, context
    assert set(widths[1.0]) <= set(range(4 + 16 + 2, 4 + 16 + 4 + 1)) and min(widths[1.0]) == 4 + 16 + 2  # 2 to 4 frames after it
    assert 0 < sum(w < 24 for w in widths[0.5]) < 24  # some windows cut, some whole
    # the cut is drawn from the seed and the step, so a resumed run cuts the same windows
    trainer = VocoderTrainer(load_vocoder_config(_distill_config(tmp_path, teacher_cache), ["data.stream_edge=0.5"]), device="cpu")
    draws = []
    for step in range(24):
        trainer.step = step
        draws.append(4 + 16 + trainer._right_context())
    assert draws == widths[0.5]
    with pytest.raises(ConfigError, match="stream_edge needs data.teacher"):
        load_vocoder_config(_distill_config(tmp_path, teacher_cache), ["data.teacher=", "loss.spectral_weight=0", "loss.phase_weight=0", "data.stream_edge=0.5"])


def test_a_distillation_without_an_adversarial_loss_builds_and_saves_no_discriminators(tmp_path, teacher_cache):
    path = _distill_config(tmp_path, teacher_cache)
    trainer = VocoderTrainer(load_vocoder_config(path, ["train.steps=2"]), device="cpu")
    assert trainer.disc is None and trainer.opt_d is None
    trainer.train_step()
    saved = trainer.save()
    assert not (saved / "discriminators.safetensors").exists() and "opt_d" not in load_train_state(saved)
    # the same run going on with an adversarial loss: its discriminators start afresh, the generator goes on
    going_on = VocoderTrainer(load_vocoder_config(path, ["train.steps=4", "loss.adv_weight=1.0", "train.disc_start_step=0"]), device="cpu", resume=True)
    assert going_on.step == 1 and going_on.disc is not None
    assert all(torch.equal(a, b) for a, b in zip(going_on.generator.state_dict().values(), trainer.generator.state_dict().values()))
    assert "loss/disc" in going_on.train_step() and (going_on.save() / "discriminators.safetensors").is_file()


def test_a_phase_loss_without_a_teacher_is_refused(tmp_path, teacher_cache):
    path = _distill_config(tmp_path, teacher_cache)
    with pytest.raises(ConfigError, match="need data.teacher"):
        load_vocoder_config(path, ["data.teacher="])
    with pytest.raises(ConfigError, match="context_frames must be at least 2"):
        load_vocoder_config(path, ["data.context_frames=1"])


def test_prepare_vocoder_teacher_stores_hifigans_waveform_of_real_and_converted_mels(tmp_path, data_dir, capsys):
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    for path, speakers in ((train, ("SF1", "SM1")), (valid, ("TF1", "TM1"))):
        path.write_text("".join(json.dumps({k: r[k] for k in ("path", "speaker")}) + "\n" for r in _rows(data_dir, speakers, "")))
    out = tmp_path / "teacher"
    args = ["prepare", "vocoder-teacher", "--out", str(out), "--train", str(train), "--valid", str(valid),
            "--minutes", "0.01", "--converted-minutes", "0.01", "--valid-minutes", "0.01"]
    assert vckit_main(args) == 0
    assert "train converted: 1 utterances" in capsys.readouterr().out
    store = TeacherStore.load(out, sample_rate=MEL.sample_rate, hop=HOP, n_mels=80)
    kinds = {(u["split"], u["kind"]) for u in store.utterances}
    assert kinds == {("train", "real"), ("train", "converted"), ("valid", "real"), ("valid", "converted")}
    assert store.index["teacher"] == "hifigan float32"
    real = next(u for u in store.utterances if u["kind"] == "real")
    mel, wave = store.utterance(real)
    torch.testing.assert_close(mel, log_mel(load_audio(real["path"], MEL.sample_rate), MEL), atol=2e-2, rtol=1e-3)  # float16
    with torch.inference_mode():
        again = load_vocoder("hifigan", MEL).vocode(store.mels[real["frame"] : real["frame"] + real["frames"]].float().T)
    torch.testing.assert_close(wave, again, atol=2e-4, rtol=0)  # int16
    assert vckit_main(args[:-2] + ["--valid-minutes", "-1"]) == 2
