"""Checkpoints: round trips, fp16 export with a checked sha256, and clear
errors for corrupt, truncated or mismatched files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from vckit.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_train_state,
    prune_checkpoints,
    read_meta,
    save_checkpoint,
    sha256_file,
    step_folder,
)
from vckit.models.vc import build_model, export_for_inference
from vckit.config import ClassifierConfig, Config, ContentConfig, DecoderConfig, ModelConfig, SpeakerConfig, VQConfig
from vckit.errors import CheckpointError, ConfigError
from vckit.models import count_parameters, inference_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(channels: int = 24, vq: bool = True, n_speakers: int = 4) -> Config:
    return Config(
        model=ModelConfig(
            content=ContentConfig(channels=channels, blocks=2, kernel_size=3, downsample=(1, 2), dim=8),
            vq=VQConfig(enabled=vq, codebook_size=16),
            speaker=SpeakerConfig(channels=channels, blocks=2, kernel_size=3, dim=16),
            decoder=DecoderConfig(channels=channels, blocks=2, kernel_size=3),
            classifier=ClassifierConfig(channels=16, blocks=1),
            n_speakers=n_speakers,
        )
    )


def trained_like(cfg: Config, seed: int = 0) -> torch.nn.Module:
    """A model whose weights are all non-trivial (AdaIN layers start at zero)."""
    torch.manual_seed(seed)
    model = build_model(cfg, for_training=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def inputs(frames: int = 57):
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 80, frames, generator=g) * 2 - 5.5
    ref = torch.randn(2, 80, 90, generator=g) * 2 - 5.5
    return mel, ref


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_config()
    model = trained_like(cfg)
    path = save_checkpoint(tmp_path / "ck", cfg, model.state_dict(), step=42, extra={"speakers": ["a", "b", "c", "d"]}, train_state={"step": 42, "x": torch.arange(3)})
    return cfg, model, path


def test_round_trip(saved):
    cfg, model, path = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, STATE_FILE])
    cfg2, sd, meta = load_checkpoint(path)
    assert cfg2 == cfg
    assert meta["step"] == 42 and meta["speakers"] == ["a", "b", "c", "d"]
    own = model.state_dict()
    assert sd.keys() == own.keys()
    assert all(torch.equal(sd[k], own[k]) for k in own)
    # the training model (with its adversary) and the inference model both load
    train_model = build_model(cfg2, sd, for_training=True).eval()
    infer_model = build_model(cfg2, sd).eval()
    assert train_model.classifier is not None and infer_model.classifier is None
    mel, ref = inputs()
    with torch.no_grad():
        spk = model.embed_speaker(ref)
        expected = model.convert(mel, spk)
        assert torch.equal(infer_model.convert(mel, infer_model.embed_speaker(ref)), expected)
        assert torch.equal(train_model.convert(mel, spk), expected)
    assert load_train_state(path)["step"] == 42
    # the config file or the weights file may be given instead of the folder
    assert load_checkpoint(path / CONFIG_FILE)[0] == cfg
    assert read_meta(path / WEIGHTS_FILE)["step"] == 42


def test_overwrite_is_atomic_and_leaves_no_temp(saved, tmp_path):
    cfg, model, path = saved
    save_checkpoint(path, cfg, model.state_dict(), step=43)
    assert read_meta(path)["step"] == 43
    assert not (path / STATE_FILE).exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_export_fp16_keeps_outputs_close(saved, tmp_path):
    cfg, model, path = saved
    out = export_for_inference(str(path), str(tmp_path / "export"), extra={"name": "tiny"})  # str paths too
    meta = read_meta(out)
    assert meta["name"] == "tiny" and meta["speakers"] == ["a", "b", "c", "d"] and meta["step"] == 42
    assert meta["sha256"][WEIGHTS_FILE] == sha256_file(out / WEIGHTS_FILE)
    assert not (out / STATE_FILE).exists()
    from safetensors.torch import load_file

    raw = load_file(str(out / WEIGHTS_FILE))
    assert not any(k.startswith("classifier.") for k in raw)
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.float16}
    assert os.path.getsize(out / WEIGHTS_FILE) < 0.6 * os.path.getsize(path / WEIGHTS_FILE)

    cfg2, sd, _ = load_checkpoint(out)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    fp16 = build_model(cfg2, sd).eval()
    mel, ref = inputs()
    with torch.no_grad():
        a = model.convert(mel, model.embed_speaker(ref))
        b = fp16.convert(mel, fp16.embed_speaker(ref))
    assert a.shape == b.shape
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert (a - b).abs().mean() < 0.01 * a.abs().mean()


def test_shipped_checkpoint_hash_is_checked(tmp_path):
    """The sha256 recorded by export is checked on load: a flipped byte is caught."""
    cfg = tiny_config()
    src = save_checkpoint(tmp_path / "src", cfg, trained_like(cfg).state_dict())
    out = export_for_inference(src, tmp_path / "export")
    load_checkpoint(out)  # intact: fine
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-5] ^= 0x01  # one bit in the last tensor: still parses as safetensors
    (out / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(out)


@pytest.mark.parametrize("keep", [0, 7, 100, -100])
def test_truncated_weights(saved, keep):
    _, _, path = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_config_of_another_architecture_names_the_tensor(saved):
    _, _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["config"]["model"]["content"]["channels"] = 32
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    cfg, sd, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"content_encoder\.inp\.weight has shape \(24, 80, 1\), the config needs \(32, 80, 1\)"):
        build_model(cfg, sd)


def test_api_load_reports_the_mismatch(saved):
    import vckit

    _, _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["config"]["model"]["decoder"]["channels"] = 16
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"decoder\.inp\.weight has shape \(24, 8, 1\), the config needs \(16, 8, 1\)"):
        vckit.load(path, vocoder="griffinlim", device="cpu")


def test_missing_and_unexpected_tensors_are_named(saved):
    cfg, model, _ = saved
    sd = dict(model.state_dict())
    del sd["decoder.out.bias"]
    with pytest.raises(CheckpointError, match=r"missing decoder\.out\.bias"):
        build_model(cfg, sd)
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected extra\.weight"):
        build_model(cfg, sd)
    no_vq = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vq=VQConfig(enabled=False)))
    with pytest.raises(CheckpointError, match=r"unexpected vq\."):
        build_model(no_vq, model.state_dict())


def test_unknown_config_key(saved, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key model.content.widht"):
        Config.from_dict({"model": {"content": {"widht": 3}}})
    _, _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["config"]["model"]["content"]["widht"] = 3
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="widht"):  # a checkpoint with a bad config is a bad checkpoint
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path, saved):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "junk")
    (tmp_path / "junk" / CONFIG_FILE).write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a vckit checkpoint"):
        load_checkpoint(tmp_path / "junk")
    _, _, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["format_version"] = 99
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="newer vckit"):
        load_checkpoint(path)
    meta["format_version"] = 1
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(path)


def test_train_state_is_loaded_safely(saved):
    _, _, path = saved
    (path / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        load_train_state(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, path / STATE_FILE)
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        load_train_state(path)  # weights_only=True refuses arbitrary objects
    (path / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="no train_state.pt"):
        load_train_state(path)


def test_step_folders_listing_and_pruning(tmp_path):
    cfg = tiny_config(vq=False)
    sd = build_model(cfg).state_dict()
    for s in (5, 10, 15, 20):
        save_checkpoint(step_folder(tmp_path, s), cfg, sd, step=s)
    (tmp_path / "step-000000025.tmp-abc").mkdir()  # a crash mid-save
    (tmp_path / "step-000000030").mkdir()  # incomplete: no files
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-{s:09d}" for s in (5, 10, 15, 20)]
    assert latest_checkpoint(tmp_path).name == "step-000000020"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000015", "step-000000020"]
    assert not (tmp_path / "step-000000025.tmp-abc").exists()
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_shipped_default_checkpoint_loads():
    from vckit.api import default_checkpoint

    cfg, sd, meta = load_checkpoint(default_checkpoint())  # checks the recorded sha256
    assert meta["sha256"][WEIGHTS_FILE]
    model = build_model(cfg, sd)
    counts = count_parameters(model)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert inference_state_dict(model).keys() == model.state_dict().keys()


def test_error_reason_is_one_line_even_for_empty_or_blank_messages():
    from vckit.errors import reason

    assert reason(EOFError()) == "EOFError"
    assert reason(ValueError("  \n\n  bad header\nsecond line")) == "bad header"
    assert reason(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"


def test_one_format_for_every_model(tmp_path):
    """The VC model, the fast vocoder and the judge share one writer and reader: versioned, kind-checked, sha256-checked."""
    from vckit.checkpoint import read_folder, read_weights, write_folder

    sd = {"w": torch.ones(3)}
    folder = write_folder(tmp_path / "v", "vocoder", {"note": 1}, {WEIGHTS_FILE: sd}, step=7, dtype=torch.float16, record_sha256=True)
    meta = read_folder(folder, "vocoder")
    assert (meta["format"], meta["format_version"], meta["step"], meta["note"]) == ("vckit-fast-vocoder", 1, 7, 1)
    assert read_weights(folder, meta)["w"].dtype == torch.float32
    with pytest.raises(CheckpointError, match="not a vckit checkpoint"):
        read_folder(folder, "vc")
    with pytest.raises(CheckpointError, match="not a speaker-verification model"):
        read_folder(folder, "verifier")
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        read_weights(folder, meta)


def test_folders_written_before_the_shared_format_still_load(tmp_path):
    """The shipped judge (config.json without format_version) and a fast-vocoder folder as the old save_vocos wrote it."""
    from safetensors.torch import save_file

    from vckit.config import MelConfig, to_dict
    from vckit.models.verifier import SpeakerVerifier, load_verifier
    from vckit.models.vocoder import Vocos, VocosConfig, load_vocoder

    judge, meta = load_verifier(REPO_ROOT / "checkpoints" / "speaker_verification")
    assert isinstance(judge, SpeakerVerifier) and "format_version" not in meta and 0 < meta["eer"] < 0.5
    # a fast vocoder folder in the layout of the previous release (written without vckit.checkpoint)
    gen_cfg = VocosConfig(dim=16, intermediate_dim=32, layers=1)
    model = Vocos(gen_cfg, MelConfig())
    old = tmp_path / "vocoder_fast"
    old.mkdir()
    weights = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(old / WEIGHTS_FILE), metadata={"format": "vckit-fast-vocoder", "step": "3"})
    meta = {"format": "vckit-fast-vocoder", "format_version": 1, "kind": "vocos", "step": 3, "mel": to_dict(MelConfig()),
            "generator": to_dict(gen_cfg), "parameters": 1, "sha256": {WEIGHTS_FILE: sha256_file(old / WEIGHTS_FILE)}}
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_vocoder(old, MelConfig())
    assert isinstance(loaded, Vocos)
    assert all(torch.equal(loaded.state_dict()[k], weights[k].float()) for k in weights)
