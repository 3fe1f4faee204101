"""The speaker-verification judge trains on the shared loop: `vckit train-sv` as a user runs it, exact resume,
the judge's folder with its EER, and judges saved before the config had sections still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vckit.cli import main as vckit_main
from vckit.config_files import load_config
from vckit.errors import VckitError
from vckit.models.verifier import SVConfig, load_verifier
from vckit.training.loop import train
from vckit.training.verifier import VerifierTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = REPO_ROOT / "recipes" / "speaker_verification" / "conf" / "smoke.yaml"


def _config(tiny_cache: dict, out: Path, *overrides: str) -> SVConfig:
    data = [f"data.features={tiny_cache['features']}", f"data.train_manifest={tiny_cache['train']}", f"data.valid_manifest={tiny_cache['valid']}"]
    return load_config(SMOKE, [*data, f"train.out_dir={out}", "train.steps=6", "train.ckpt_every=3", "train.batch_size=8", "train.amp=none", *overrides], cls=SVConfig)


def test_train_sv_writes_a_judge_with_its_eer(tiny_cache, tmp_path, capsys):
    out = tmp_path / "sv"
    args = ["train-sv", "--config", str(SMOKE), "--quiet", "--device", "cpu", "--set", f"data.features={tiny_cache['features']}",
            "--set", f"data.train_manifest={tiny_cache['train']}", "--set", f"data.valid_manifest={tiny_cache['valid']}",
            "--set", f"train.out_dir={out}", "--set", "train.steps=4", "--set", "train.batch_size=8"]
    assert vckit_main(args) == 0
    printed = capsys.readouterr().out
    assert "eer=" in printed and str(out / "judge") in printed
    judge, meta = load_verifier(out / "judge")
    assert meta["step"] == 4 and 0 <= meta["eer"] <= 1 and meta["trials"] > 0
    assert (out / "step-000000004").is_dir()  # the run's own checkpoint, beside the judge
    emb = judge(torch.zeros(2, 80, 64))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_a_resumed_judge_equals_an_unbroken_run(tiny_cache, tmp_path):
    straight = _config(tiny_cache, tmp_path / "a", "train.deterministic=true")
    train(VerifierTrainer, straight, device="cpu", progress=False)
    broken = _config(tiny_cache, tmp_path / "b", "train.deterministic=true")
    part = train(VerifierTrainer, broken, device="cpu", max_steps=3, progress=False)
    assert "eer" not in part and not (tmp_path / "b" / "judge").exists()  # stopped early: no judge yet
    train(VerifierTrainer, broken, device="cpu", resume=True, progress=False)
    a, _ = load_verifier(tmp_path / "a" / "judge")
    b, _ = load_verifier(tmp_path / "b" / "judge")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)
    other = _config(tiny_cache, tmp_path / "b", "encoder.dim=16")
    with pytest.raises(VckitError, match="another encoder"):
        VerifierTrainer(other, device="cpu", resume=True)


def test_a_judge_saved_with_the_old_flat_config_loads(tmp_path):
    shipped = REPO_ROOT / "checkpoints" / "speaker_verification"
    flat = json.loads((shipped / "config.json").read_text())["config"]
    assert "lr" in flat and "train" not in flat  # the shipped judge predates the sections
    cfg = SVConfig.from_dict(flat)
    assert (cfg.train.lr, cfg.train.time_budget, cfg.data.segment_frames, cfg.train.margin) == (flat["lr"], flat["time_budget"], flat["segment_frames"], flat["margin"])
    assert cfg.data.augment.noise_prob == flat["augment"]["noise_prob"]
    copy = shutil.copytree(shipped, tmp_path / "judge")
    judge, meta = load_verifier(copy)
    assert judge.cfg == cfg and meta["eer"] == pytest.approx(0.1107, abs=1e-4)
