"""The fast vocoder: Vocos generator, discriminators and losses, waveform cache, trainer, loading."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from vckit.config import MelConfig, from_dict
from vckit.errors import CheckpointError, VckitError
from vckit.models.vocoder import Vocos, VocosConfig, available_vocoders, load_vocoder
from vckit.models.vocoder import vocos as vocos_module
from vckit.models.vocoder.discriminators import Discriminators, WaveDiscriminatorConfig
from vckit.models.vocoder.vocos import export_vocos, hann_window_padded, istft
from vckit.data.waves import WaveSampler, WaveStore, write_wave_cache
from vckit.cli import main as vckit_main
from vckit.training.loop import train
from vckit.training.losses import MultiResolutionMelLoss, discriminator_loss, feature_matching_loss, generator_loss
from vckit.training.vocoder import VocoderConfig, VocoderTrainer, load_vocoder_config

MEL = MelConfig()
TINY_GEN = VocosConfig(dim=32, intermediate_dim=64, layers=2)
TINY_DISC = {"periods": [2, 3], "period_channels": [4, 8, 16], "resolutions": [[512, 128, 512]], "resolution_channels": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def wave_cache(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Four real utterances (three to train on, one held out) at 22050 Hz."""
    train_files = [data_dir / "vcc2016" / spk / "100001.wav" for spk in ("SF1", "SM1", "TF1")]
    valid_files = [data_dir / "vcc2016" / "TM1" / "100001.wav"]
    out = tmp_path_factory.mktemp("wave_cache")
    splits = {"train": [{"path": str(p)} for p in train_files], "valid": [{"path": str(p)} for p in valid_files]}
    index = write_wave_cache(splits, out, MEL.sample_rate, progress=False)
    assert not index["skipped"] and len(index["utterances"]) == 4
    return out


def tiny_config(cache: Path, out_dir: Path, **train: object) -> VocoderConfig:
    """A run of 6 tiny steps (2 mel-only), written to ``<out_dir>.yaml`` and read back by the strict loader."""
    d = {
        "generator": dataclasses.asdict(TINY_GEN),
        "discriminator": TINY_DISC,
        "loss": {"mel_resolutions": [[512, 128, 40], [1024, 256, 80]]},
        "data": {"cache": str(cache), "segment": 2048, "valid_utterances": 1, "valid_seconds": 1.0},
        "train": {"out_dir": str(out_dir), "batch_size": 2, "steps": 6, "lr": 1e-3, "disc_start_step": 2, "amp": "none",
                  "log_every": 1, "valid_every": 1000, "ckpt_every": 3, "keep_last": 5, **train},
    }
    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_vocoder_config(path)


# -- generator -----------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 7, 33])
def test_generator_output_is_frames_times_hop(frames):
    torch.manual_seed(0)
    gen = Vocos(TINY_GEN, MEL).eval()
    with torch.inference_mode():
        wav = gen(torch.randn(2, 80, frames) - 5.0)
    assert wav.shape == (2, frames * 256)
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0
    one = gen.vocode(torch.randn(80, frames) - 5.0)
    assert one.shape == (frames * 256,)


def test_chunked_vocoding_equals_whole_utterance():
    torch.manual_seed(0)
    gen = Vocos(TINY_GEN, MEL).eval()
    mel = torch.randn(80, 301) - 5.0
    with torch.inference_mode():
        whole = gen(mel[None])[0]
    chunked = gen.vocode(mel, chunk_frames=64, overlap_frames=8)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_istft_inverts_the_front_end_analysis_sample_exactly():
    """The head's ISTFT undoes the front-end STFT (reflect pad (n_fft - hop) / 2, not centred): same length, no shift."""
    window = hann_window_padded(MEL)
    p = (MEL.n_fft - MEL.hop_length) // 2
    for frames in (3, 33):
        x = torch.randn(2, frames * MEL.hop_length)
        padded = F.pad(x[:, None], (p, p), mode="reflect")[:, 0]
        spec = torch.stft(padded, MEL.n_fft, MEL.hop_length, window=window, center=False, return_complex=True)
        assert spec.shape[-1] == frames
        torch.testing.assert_close(istft(spec, window, MEL.hop_length), x, atol=1e-5, rtol=0)


def test_default_architecture_is_a_few_million_parameters():
    n = sum(p.numel() for p in Vocos(VocosConfig(), MEL).parameters())
    assert 3e6 < n < 10e6


# -- discriminators and losses -----------------------------------------------
def test_discriminator_outputs_have_one_score_map_and_features_each():
    disc = Discriminators(from_dict(WaveDiscriminatorConfig, TINY_DISC))
    wav = torch.randn(3, 4096) * 0.1
    outs = disc(wav)
    assert len(outs) == 2 + 1
    for (logits, feats), period in zip(outs[:2], (2, 3)):
        assert logits.dim() == 2 and logits.shape[0] == 3
        assert len(feats) == 3 + 1 and all(f.shape[0] == 3 and f.shape[-1] == period for f in feats)
    logits, feats = outs[2]
    assert logits.shape[0] == 3 and len(feats) == 6
    assert feats[0].shape[-1] == 512 // 2 + 1  # frequency bins of the 512-point STFT
    assert feats[0].shape[-2] == 4096 // 128 + 1  # frames


def test_losses_vanish_where_they_should():
    real = [(torch.full((2, 5), 1.5), [torch.ones(2, 4)])]
    fake = [(torch.full((2, 5), -1.5), [torch.ones(2, 4)])]
    w = [1.0]
    assert float(discriminator_loss(real, fake, "hinge", w)) == 0.0
    assert float(discriminator_loss(real, fake, "lsgan", w)) > 0.0
    assert float(generator_loss(fake, "hinge", w)) == pytest.approx(2.5)
    assert float(feature_matching_loss(real, fake, w)) == 0.0
    mel_loss = MultiResolutionMelLoss(MEL, ((512, 128, 40), (1024, 256, 80)))
    x = torch.randn(2, 4096) * 0.1
    assert float(mel_loss(x, x)) == 0.0 and float(mel_loss(0.5 * x, x)) > 0.5


# -- data --------------------------------------------------------------------
def test_wave_cache_flac_equals_npy_and_segments_come_from_one_utterance(tmp_path, wave_cache):
    store = WaveStore.load(wave_cache, MEL.sample_rate)
    rows = [{"path": u["path"]} for u in store.utterances]
    write_wave_cache({"train": rows}, tmp_path / "flac", MEL.sample_rate, flac=True, progress=False)
    flac = WaveStore.load(tmp_path / "flac", MEL.sample_rate)
    assert torch.equal(flac.wav, store.wav)
    capped = write_wave_cache({"train": rows}, tmp_path / "cap", MEL.sample_rate, max_minutes={"train": 0.01}, progress=False)
    assert len(capped["utterances"]) == 1  # stops once 0.6 s is reached
    with pytest.raises(VckitError, match="16000 Hz"):
        WaveStore.load(wave_cache, 16000)

    utt = store.split("valid")[0]
    only = WaveSampler(store, [utt], 2048, seed=0)
    segs = only.sample(4)
    full = store.audio(utt)
    assert segs.shape == (4, 2048)
    for s in segs:  # every segment is a contiguous slice of that utterance
        candidates = torch.nonzero(full[: full.numel() - 2047] == s[0])[:, 0]
        assert any(torch.equal(full[i : i + 2048], s) for i in candidates.tolist())


# -- training ----------------------------------------------------------------
def test_smoke_training_through_main_writes_loadable_checkpoints(tmp_path, wave_cache):
    cfg_path = tmp_path / "run.yaml"
    tiny_config(wave_cache, tmp_path / "run")  # writes run.yaml beside the run folder
    assert vckit_main(["train-vocoder", "--config", str(cfg_path), "--device", "cpu", "--no-progress", "--set", "train.valid_every=6"]) == 0
    steps = sorted(p.name for p in (tmp_path / "run").glob("step-*"))
    assert steps == ["step-000000003", "step-000000006"]
    ck = tmp_path / "run" / "step-000000006"
    assert {p.name for p in ck.iterdir()} == {"config.json", "model.safetensors", "discriminators.safetensors", "train_state.pt"}

    voc = load_vocoder(ck, MEL)  # a training checkpoint is a vocoder folder
    assert isinstance(voc, Vocos) and not voc.training
    assert voc.vocode(torch.randn(80, 11) - 5.0).shape == (11 * 256,)
    with pytest.raises(CheckpointError, match="sample_rate 22050 but the model uses 16000"):
        load_vocoder(ck, dataclasses.replace(MEL, sample_rate=16000))

    out = export_vocos(ck, tmp_path / "shipped")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    shipped = load_vocoder(out / "model.safetensors", MEL)
    torch.testing.assert_close(shipped.head.weight, voc.head.weight.half().float())


def test_resume_reaches_the_same_weights_as_an_unbroken_run(tmp_path, wave_cache):
    straight = tiny_config(wave_cache, tmp_path / "a", deterministic=True)
    train(VocoderTrainer, straight, device="cpu", progress=False)
    broken = tiny_config(wave_cache, tmp_path / "b", deterministic=True)
    train(VocoderTrainer, broken, device="cpu", max_steps=3, progress=False)  # 2 mel-only steps, 1 adversarial
    assert not (tmp_path / "b" / "step-000000006").exists()
    train(VocoderTrainer, broken, device="cpu", resume=True, progress=False)

    from safetensors.torch import load_file

    for name in ("model.safetensors", "discriminators.safetensors"):
        a = load_file(str(tmp_path / "a" / "step-000000006" / name))
        b = load_file(str(tmp_path / "b" / "step-000000006" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
    for name in ("model.safetensors", "discriminators.safetensors"):  # both did train after step 3
        first = load_file(str(tmp_path / "a" / "step-000000003" / name))
        last = load_file(str(tmp_path / "a" / "step-000000006" / name))
        assert any(not torch.equal(first[k], last[k]) for k in first), name


def test_torchrun_two_processes_on_cpu(tmp_path, wave_cache):
    """DDP over gloo: both phases (mel-only, then adversarial), one checkpoint from rank 0, a sampler state per rank."""
    import os
    import subprocess
    import sys

    from vckit.checkpoint import load_train_state

    tiny_config(wave_cache, tmp_path / "ddp", steps=4, ckpt_every=1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vckit.cli", "train-vocoder"]
    cmd += ["--config", str(tmp_path / "ddp.yaml"), "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in (tmp_path / "ddp").glob("step-*"))
    assert names == ["step-000000004"]
    state = load_train_state(tmp_path / "ddp" / names[0])
    assert state["world"] == 2 and len(state["sampler"]) == 2
    assert not torch.equal(state["sampler"][0], state["sampler"][1])  # each rank draws its own segments
    assert isinstance(load_vocoder(tmp_path / "ddp" / names[0], MEL), Vocos)  # plain (unwrapped) weights


def test_resume_with_another_architecture_is_refused(tmp_path, wave_cache):
    cfg = tiny_config(wave_cache, tmp_path / "run", steps=3)
    train(VocoderTrainer, cfg, device="cpu", progress=False)
    other = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, layers=3))
    with pytest.raises(VckitError, match="another generator config"):
        VocoderTrainer(other, device="cpu", resume=True)


def test_mel_only_training_lowers_the_validation_mel_loss(tmp_path, wave_cache):
    cfg = tiny_config(wave_cache, tmp_path / "run", steps=60, lr=3e-3, min_lr_ratio=1.0, disc_start_step=1000, ckpt_every=1000)
    trainer = VocoderTrainer(cfg, device="cpu")
    before = trainer.validate()["valid/mel_l1"]
    trainer.run(progress=False)
    after = trainer.validate()["valid/mel_l1"]
    assert after < 0.8 * before


# -- the packaged model ----------------------------------------------------
def test_a_missing_fast_vocoder_says_to_use_another(tmp_path, monkeypatch):
    monkeypatch.setattr(vocos_module, "PACKAGED_DIR", tmp_path / "vocoder_fast")
    with pytest.raises(VckitError, match="the fast vocoder is not at .*hifigan or griffinlim"):
        load_vocoder("fast", MEL)
    assert "fast" not in available_vocoders()

    torch.manual_seed(0)
    vocos_module.save_vocos(tmp_path / "vocoder_fast", Vocos(TINY_GEN, MEL), dtype=torch.float16)
    voc = load_vocoder("fast", MEL)
    assert voc.name == "fast" and "fast" in available_vocoders()
    (tmp_path / "vocoder_fast" / "model.safetensors").write_bytes(b"0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        load_vocoder("fast", MEL)


def test_wrong_weights_for_the_config_are_named(tmp_path):
    vocos_module.save_vocos(tmp_path / "v", Vocos(TINY_GEN, MEL))
    cfg = tmp_path / "v" / "config.json"
    cfg.write_text(cfg.read_text().replace('"layers": 2', '"layers": 3'))
    with pytest.raises(CheckpointError, match=r"missing blocks\.2\."):
        load_vocoder(tmp_path / "v", MEL)



def test_a_fast_vocoder_folder_converts_and_streams_in_float32(tmp_path, data_dir, causal_checkpoint):
    import vckit

    torch.manual_seed(0)
    vocos_module.save_vocos(tmp_path / "v", Vocos(TINY_GEN, MEL))
    ref, src = data_dir / "vcc2016" / "TM1" / "100003.wav", data_dir / "vcc2016" / "SF1" / "100001.wav"
    vc = vckit.load(vocoder=str(tmp_path / "v"), device="cpu", precision="bf16")
    assert isinstance(vc.vocoder, Vocos) and vc.vocoder.dtype == torch.float32  # bf16 would blur its phases
    assert vc.convert(src, ref).dtype == np.float32
    live = vckit.load(causal_checkpoint, vocoder=str(tmp_path / "v"), device="cpu", precision="bf16")
    stream = live.stream(live.voice(ref), bf16=True)
    assert stream.vocoder.dtype == torch.float32
    assert stream.voc_ctx == live.vocoder.context_frames == 12  # its whole left reach: it is cheap
    block = np.zeros(5000, np.float32)
    assert stream.push(block).shape == block.shape
