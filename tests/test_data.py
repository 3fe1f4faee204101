"""Manifests, the feature cache, segment batching, augmentation and the
shared_dev data-preparation recipe."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vckit.audio import load_audio, log_mel
from vckit.config import AugmentConfig, MelConfig
from vckit.data.features import FeatureStore, QUANT_HI, QUANT_LO, cache_features, from_uint8, to_uint8
from vckit.data.manifest import manifest_from_csv, manifest_from_folder, output_paths, read_manifest, source_files, write_manifest
from vckit.data.sampling import SegmentSampler, augment, mel_shift, valid_batches
from vckit.errors import VckitError

REPO_ROOT = Path(__file__).resolve().parents[1]


def voice(seconds: float, sr: int, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A crude voiced sound: harmonics of f0 with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8) if f0 * k < sr / 2)
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(len(t))
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


# -- manifests -------------------------------------------------------------------
def test_manifest_from_folder(tmp_path, caplog):
    root = tmp_path / "corpus"
    (root / "alice" / "book1").mkdir(parents=True)
    (root / "bob").mkdir()
    sf.write(root / "alice" / "a1.wav", voice(1.0, 16000), 16000)
    sf.write(root / "alice" / "book1" / "a2.flac", voice(0.5, 22050), 22050)
    sf.write(root / "bob" / "b1.wav", voice(2.0, 8000), 8000)
    sf.write(root / "loose.wav", voice(1.0, 16000), 16000)  # not in a speaker folder: ignored
    (root / "bob" / "b1.txt").write_text("hello")  # not audio: ignored
    (root / "bob" / "broken.wav").write_text("not a wav")  # unreadable: skipped with a warning
    rows = manifest_from_folder(root)
    assert [(Path(r["path"]).name, r["speaker"], r["duration"], r["utt_id"]) for r in rows] == [
        ("a1.wav", "alice", 1.0, "a1"),
        ("a2.flac", "alice", 0.5, "a2"),
        ("b1.wav", "bob", 2.0, "b1"),
    ]
    assert all(Path(r["path"]).is_file() for r in rows)
    assert "broken.wav" in caplog.text


def test_manifest_from_folder_errors(tmp_path):
    with pytest.raises(VckitError, match="not found"):
        manifest_from_folder(tmp_path / "missing")
    (tmp_path / "spk").mkdir()
    (tmp_path / "spk" / "x.txt").write_text("x")
    with pytest.raises(VckitError, match="no audio files"):
        manifest_from_folder(tmp_path)


def test_manifest_from_csv(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "utt_id", "duration_s", "gender", "text"])
        w.writerow(["s1/u1.wav", "s1", "u1", "1.25", "F", ""])
        w.writerow(["s2/u2.wav", "s2", "u2", "", "M", "hi, there"])
    rows = manifest_from_csv(d / "metadata.csv")
    assert rows[0] == {"path": str(d / "s1/u1.wav"), "speaker": "s1", "utt_id": "u1", "gender": "F", "duration": 1.25}
    assert rows[1]["text"] == "hi, there" and "duration" not in rows[1]
    other = tmp_path / "elsewhere"
    assert manifest_from_csv(d / "metadata.csv", root=other)[0]["path"] == str(other / "s1/u1.wav")

    (d / "bad.csv").write_text("file,who\na.wav,x\n")
    with pytest.raises(VckitError, match="path, speaker"):
        manifest_from_csv(d / "bad.csv")


def test_manifest_from_real_metadata(data_dir):
    rows = manifest_from_csv(data_dir / "vcc2016" / "metadata.csv")
    assert len(rows) == 140
    assert {r["speaker"] for r in rows} == {"SF1", "SM1", "TF1", "TM1"}
    assert all(Path(r["path"]).is_file() for r in rows[:10])
    assert all(r["duration"] > 0 for r in rows)


def test_manifest_round_trip_and_errors(tmp_path):
    rows = [{"path": "/a/b.wav", "speaker": "x", "duration": 1.5, "text": "naïve"}, {"path": "/c.wav", "speaker": "y"}]
    write_manifest(rows, tmp_path / "sub" / "m.jsonl")
    assert read_manifest(tmp_path / "sub" / "m.jsonl") == rows
    assert not list((tmp_path / "sub").glob("*.tmp"))
    with pytest.raises(VckitError, match="not found"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"path": "a", "speaker": "b"}\n{oops\n')
    with pytest.raises(VckitError, match=r"bad.jsonl:2 is not valid JSON"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "nokey.jsonl").write_text('{"path": "a"}\n')
    with pytest.raises(VckitError, match="'speaker'"):
        read_manifest(tmp_path / "nokey.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(VckitError, match="empty"):
        read_manifest(tmp_path / "empty.jsonl")


# -- feature cache -------------------------------------------------------------------
@pytest.mark.parametrize("line, says", [
    ('{"path": "a.wav"', "is not valid JSON"),
    ('{"speaker": "x"}', "needs 'path'"),
    ("[1, 2]", "is not a JSON object"),
    ("5", "is not a JSON object"),
    ('{"path": 7}', "needs 'path'"),
])
def test_a_bad_jsonl_line_is_one_error_naming_the_file_and_line(tmp_path, line, says):
    """The one JSONL parser: the batch list and the training manifest fail the same way."""
    good = json.dumps({"path": "a.wav", "speaker": "s"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n\n{line}\n")
    for read in (source_files, read_manifest):
        with pytest.raises(VckitError) as e:
            read(tmp_path / "m.jsonl")
        assert "m.jsonl:3 " in str(e.value) and says in str(e.value), str(e.value)


def test_source_lists_drop_only_a_real_header(tmp_path):
    (tmp_path / "paths").mkdir()
    txt = tmp_path / "l.txt"
    txt.write_text("paths/a.wav\n# a comment\n\npaths/b.wav\n")
    assert source_files(txt) == [tmp_path / "paths" / "a.wav", tmp_path / "paths" / "b.wav"]
    csv_list = tmp_path / "l.csv"
    csv_list.write_text('path,speaker\n"with, comma.wav",x\npath2.wav,y\n')
    assert source_files(csv_list) == [tmp_path / "with, comma.wav", tmp_path / "path2.wav"]
    (tmp_path / "h.csv").write_text("Path\n")
    with pytest.raises(VckitError, match="lists no files"):
        source_files(tmp_path / "h.csv")
    assert source_files(tmp_path / "one.wav") is None


def test_batch_outputs_mirror_subfolders(tmp_path):
    files = [tmp_path / "in" / "TM1" / "100001.wav", tmp_path / "in" / "SF1" / "100001.wav", tmp_path / "in" / "x.flac", tmp_path / "in" / "x.wav"]
    (tmp_path / "in").mkdir()
    out = output_paths(files, tmp_path / "in", tmp_path / "out", ".flac")
    assert out == [tmp_path / "out" / "TM1" / "100001.flac", tmp_path / "out" / "SF1" / "100001.flac", tmp_path / "out" / "x.flac", tmp_path / "out" / "x_2.flac"]
    (tmp_path / "m.jsonl").write_text("")  # a list: relative to the files' common folder
    assert output_paths(files[:2], tmp_path / "m.jsonl", tmp_path / "o") == [tmp_path / "o" / "TM1" / "100001.wav", tmp_path / "o" / "SF1" / "100001.wav"]


def test_quantisation_error_is_small():
    x = np.linspace(QUANT_LO, QUANT_HI, 10001, dtype=np.float32)
    back = from_uint8(torch.from_numpy(to_uint8(x))).numpy()
    assert np.abs(back - x).max() < 0.03
    assert to_uint8(np.array([-100.0, 100.0])).tolist() == [0, 255]  # clipped, not wrapped


def test_tiny_cache_holds_every_file(tiny_cache):
    index = tiny_cache["index"]
    utts = index["utterances"]
    assert len(utts) == 22 and index["skipped"] == []
    assert sum(u["frames"] for u in utts) == index["frames"]
    offsets = [u["offset"] for u in utts]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert all(b["offset"] == a["offset"] + a["frames"] for a, b in zip(utts, utts[1:]))
    store = FeatureStore.load(tiny_cache["features"], MelConfig())
    assert store.mels.shape == (index["frames"], 80) and store.mels.dtype == torch.uint8
    # the stored features are the front-end's log-mel, up to the quantisation step
    u = utts[0]
    mel = log_mel(load_audio(u["path"], 22050, min_seconds=0.1), MelConfig())
    assert store.utterance(0).shape == mel.shape
    assert (store.utterance(0) - mel.clamp(QUANT_LO, QUANT_HI)).abs().max() < 0.03


def test_feature_store_checks_the_mel_config(tiny_cache, tmp_path):
    with pytest.raises(VckitError, match="n_mels: 80 vs 64"):
        FeatureStore.load(tiny_cache["features"], MelConfig(n_mels=64))
    with pytest.raises(VckitError, match="no feature cache"):
        FeatureStore.load(tmp_path)


def test_cache_skips_unusable_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, voice(0.5, 16000), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_text("junk")
    rows = [{"path": str(p), "speaker": "s"} for p in (silent, good, junk)]
    index = cache_features(rows, MelConfig(), tmp_path / "f", progress=False)
    assert [Path(u["path"]).name for u in index["utterances"]] == ["good.wav"]
    assert sorted(Path(p).name for p in index["skipped"]) == ["junk.wav", "silent.wav"]
    with pytest.raises(VckitError, match="no usable audio"):
        cache_features(rows[:1], MelConfig(), tmp_path / "g", progress=False)


# -- the sampler ------------------------------------------------------------------------
SPEAKERS = {"ann": [50, 10], "bea": [200], "cid": [5, 7, 120], "dan": [31]}


def synthetic_store() -> tuple[FeatureStore, list[dict]]:
    """Two mel channels that say where each frame came from: channel 0 holds
    the utterance number, channel 1 the frame's position in its utterance."""
    utts, chunks, off = [], [], 0
    for spk, lengths in SPEAKERS.items():
        for n in lengths:
            k = len(utts)
            chunks.append(np.stack([np.full(n, 10 * (k + 1)), np.arange(n)], axis=1).astype(np.uint8))
            utts.append({"path": f"{spk}/{k}.wav", "speaker": spk, "offset": off, "frames": n})
            off += n
    return FeatureStore(torch.from_numpy(np.concatenate(chunks)), utts, MelConfig()), utts


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2, T) dequantised -> utterance numbers (B, T), positions (B, T)."""
    q = to_uint8(x.numpy()).astype(int)
    return q[:, 0] // 10 - 1, q[:, 1]


@pytest.mark.parametrize("segment", [8, 32])
def test_batches_pair_segments_of_one_speaker(segment):
    store, utts = synthetic_store()
    sampler = SegmentSampler(store, utts, segment, power=0.0, seed=1)
    assert sampler.speakers == sorted(SPEAKERS)
    seen_utts, seen_spk = set(), set()
    for _ in range(20):
        b = sampler.sample(16)
        assert b["mel"].shape == b["ref"].shape == (16, 2, segment)
        assert b["mask"].shape == (16, segment) and b["mask"].dtype == torch.bool
        mel_utt, mel_pos = decode(b["mel"])
        ref_utt, _ = decode(b["ref"])
        for i in range(16):
            spk = sampler.speakers[int(b["speaker"][i])]
            # a segment never crosses an utterance boundary
            assert len(set(mel_utt[i])) == 1 and len(set(ref_utt[i])) == 1
            u, r = utts[mel_utt[i][0]], utts[ref_utt[i][0]]
            assert u["speaker"] == spk and r["speaker"] == spk  # mel and ref: the same speaker
            n = u["frames"]
            mask = b["mask"][i].numpy()
            # real frames first, consecutive; a short utterance is tiled after them
            assert mask.sum() == min(n, segment) and mask[: min(n, segment)].all()
            start = mel_pos[i][0]
            assert np.array_equal(mel_pos[i], (start + np.arange(segment)) % n)
            if n >= segment:
                assert start + segment <= n
            seen_utts.add(mel_utt[i][0])
            seen_spk.add(spk)
    assert seen_spk == set(SPEAKERS) and len(seen_utts) == len(utts)


def test_speaker_sampling_power():
    store, utts = synthetic_store()
    frames = {s: sum(v) for s, v in SPEAKERS.items()}
    uniform = SegmentSampler(store, utts, 8, power=0.0).spk_probs
    assert torch.allclose(uniform, torch.full((4,), 0.25))
    by_audio = SegmentSampler(store, utts, 8, power=1.0)
    total = sum(frames.values())
    assert torch.allclose(by_audio.spk_probs, torch.tensor([frames[s] / total for s in by_audio.speakers]))
    counts = torch.bincount(by_audio.sample(4000)["speaker"], minlength=4).float() / 4000
    assert torch.allclose(counts, by_audio.spk_probs, atol=0.03)


def test_sampler_state_round_trip():
    store, utts = synthetic_store()
    a = SegmentSampler(store, utts, 16, seed=7)
    a.sample(4)
    state = a.state_dict()
    b = SegmentSampler(store, utts, 16, seed=99)
    b.load_state_dict(state)
    x, y = a.sample(8), b.sample(8)
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a.sample(8)["mel"], SegmentSampler(store, utts, 16, seed=8).sample(8)["mel"])


def test_sampler_needs_utterances():
    store, _ = synthetic_store()
    with pytest.raises(VckitError, match="no training utterances"):
        SegmentSampler(store, [], 16)


def test_real_sampler_on_the_tiny_cache(tiny_cache):
    store = FeatureStore.load(tiny_cache["features"], MelConfig())
    train = {r["path"] for r in read_manifest(tiny_cache["train"])}
    utts = [u for u in store.utterances if u["path"] in train]
    sampler = SegmentSampler(store, utts, 128)
    b = sampler.sample(32)
    assert b["mel"].shape == (32, 80, 128)
    assert torch.isfinite(b["mel"]).all() and b["mel"].min() >= QUANT_LO - 1e-5
    short = [i for i in range(32) if sampler.speakers[int(b["speaker"][i])] == "fsdd:george"]
    assert short and all(not b["mask"][i].all() for i in short)  # the digits are shorter than 128 frames (1.5 s)


# -- augmentation -------------------------------------------------------------------
def real_batch(tiny_cache, length: int, batch: int = 16) -> dict:
    store = FeatureStore.load(tiny_cache["features"], MelConfig())
    return SegmentSampler(store, store.utterances, length, seed=3).sample(batch)


def test_augment_keeps_shapes_and_finite_values(tiny_cache):
    cfg = AugmentConfig(prob=1.0, noise_prob=0.5)
    seg = 64
    b = real_batch(tiny_cache, math.ceil(seg * (1 + cfg.speed)))
    out = augment(b, cfg, torch.Generator().manual_seed(0), seg)
    assert out["mel"].shape == out["ref"].shape == (16, 80, seg)
    assert out["mask"].shape == (16, seg) and out["mask"].dtype == torch.bool
    assert torch.equal(out["speaker"], b["speaker"])
    for k in ("mel", "ref"):
        assert torch.isfinite(out[k]).all()
        assert out[k].min() >= QUANT_LO - 1e-5
    assert (out["mel"] - b["mel"][..., :seg]).abs().mean() > 0.05  # it did change something


def test_augment_off_is_the_identity(tiny_cache):
    seg = 48
    b = real_batch(tiny_cache, seg + 5)
    out = augment(b, AugmentConfig(prob=0.0), torch.Generator().manual_seed(0), seg)
    assert torch.allclose(out["mel"], b["mel"][..., :seg], atol=1e-4)
    assert torch.allclose(out["ref"], b["ref"][..., :seg], atol=1e-4)
    assert torch.equal(out["mask"], b["mask"][..., :seg])


def test_augment_masks_short_utterances():
    store, utts = synthetic_store()
    short = [u for u in utts if u["frames"] == 5]
    b = SegmentSampler(store, short, 11).sample(4)
    out = augment(b, AugmentConfig(prob=0.0), torch.Generator().manual_seed(0), 10)
    assert out["mask"].sum(1).tolist() == [5, 5, 5, 5]


def test_valid_batches(tiny_cache):
    store = FeatureStore.load(tiny_cache["features"], MelConfig())
    batches = list(valid_batches(store, store.utterances, 64, 8))
    assert sum(b["mel"].shape[0] for b in batches) == len(store.utterances)
    assert [b["mel"].shape[0] for b in batches] == [8, 8, 6]
    for b in batches:
        assert b["mel"].shape[1:] == (80, 64) and b["ref"].shape == b["mel"].shape and b["mask"].shape == (b["mel"].shape[0], 64)


# -- recipes/shared_dev/prepare.py -------------------------------------------------------
def load_prepare():
    spec = importlib.util.spec_from_file_location("shared_dev_prepare", REPO_ROOT / "recipes" / "shared_dev" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_corpus(root: Path, corpus: str, speakers: dict[str, int], sr: int, gender: str = "F") -> None:
    rows = []
    for s, n in speakers.items():
        (root / corpus / s).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rel = f"{s}/{s}_{i:03d}.wav"
            sf.write(root / corpus / rel, voice(1.0 + 0.25 * i, sr, f0=120 + 20 * i, seed=i), sr)
            rows.append([rel, s, f"{s}_{i:03d}", "", sr, 1, "PCM_16", 1.0 + 0.25 * i, gender])
    with open(root / corpus / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "utt_id", "text", "sample_rate", "channels", "subtype", "duration_s", "gender"])
        w.writerows(rows)


def test_prepare_on_a_fake_corpus(tmp_path, capsys):
    prepare = load_prepare()
    data, out = tmp_path / "data", tmp_path / "cache"
    fake_corpus(data, "vcc2016", {"SF1": 2, "TF1": 3}, 16000)  # SF1 is a validation speaker
    fake_corpus(data, "vcc2016_more", {"SF2": 2}, 16000)
    fake_corpus(data, "fsdd", {"lucas": 2, "george": 2}, 8000, gender="M")  # lucas: validation
    (data / "no_metadata" / "x").mkdir(parents=True)  # a folder without metadata.csv is ignored
    assert {"vcc2016:SF1", "fsdd:lucas"} <= set(prepare.VALID_SPEAKERS)

    assert prepare.main(["--data", str(data), "--out", str(out)]) == 0
    train, valid = read_manifest(out / "train.jsonl"), read_manifest(out / "valid.jsonl")
    train_spk, valid_spk = {r["speaker"] for r in train}, {r["speaker"] for r in valid}
    assert train_spk == {"vcc2016:TF1", "vcc2016:SF2", "fsdd:george"}  # vcc2016_more joins the vcc2016 family
    assert valid_spk == {"vcc2016:SF1", "fsdd:lucas"}
    assert not train_spk & set(prepare.VALID_SPEAKERS)
    assert len(train) == 7 and len(valid) == 4
    assert all(Path(r["path"]).is_file() and r["corpus"] in ("vcc2016", "vcc2016_more", "fsdd") for r in train + valid)

    index = json.loads((out / "features" / "index.json").read_text())
    assert len(index["utterances"]) == 11 and not index["skipped"]
    mels = np.load(out / "features" / "mels.npy")
    assert mels.shape == (index["frames"], 80)
    store = FeatureStore.load(out / "features", MelConfig())
    assert {u["path"] for u in store.utterances} == {r["path"] for r in train + valid}
    printed = capsys.readouterr().out
    assert "train: 7 files, 3 speakers" in printed and "valid: 4 files, 2 speakers" in printed


def test_prepare_options_and_errors(tmp_path, capsys):
    prepare = load_prepare()
    data = tmp_path / "data"
    fake_corpus(data, "vctk", {"p225": 3, "p226": 1}, 16000)
    out = tmp_path / "out"
    assert prepare.main(["--data", str(data), "--out", str(out), "--no-features"]) == 0
    assert (out / "train.jsonl").is_file() and not (out / "features").exists()
    assert {r["speaker"] for r in read_manifest(out / "valid.jsonl")} == {"vctk:p226"}
    assert prepare.main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert prepare.main(["--data", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_prepare_with_frame_features(tmp_path, capsys, monkeypatch):
    """--frame-features: each utterance's cached F0 is its own tone's; the teacher's PCA is fitted on the training rows."""
    import vckit.data.frame_features as ff

    fitted_on = []
    real = ff.cache_frame_features
    monkeypatch.setattr(ff, "cache_frame_features", lambda folder, **kw: fitted_on.append(set(kw["fit_paths"])) or real(folder, **kw))
    prepare = load_prepare()
    data, out = tmp_path / "data", tmp_path / "cache"
    fake_corpus(data, "vcc2016", {"SF1": 2, "TF1": 3}, 16000)  # SF1 validates
    assert prepare.main(["--data", str(data), "--out", str(out), "--frame-features", "--threads", "1"]) == 0
    assert "frame features: F0" in capsys.readouterr().out
    assert fitted_on == [{r["path"] for r in read_manifest(out / "train.jsonl")}]
    store = FeatureStore.load(out / "features", MelConfig())
    assert store.extra["f0"].shape == (store.mels.shape[0],) and store.extra["phonetic"].shape == (store.mels.shape[0], 64)
    for u in store.utterances:
        f0 = store.extra["f0"][u["offset"] : u["offset"] + u["frames"]].float()
        tone = 120 + 20 * int(u["utt_id"].rsplit("_", 1)[1])  # fake_corpus's i-th file is a tone of 120 + 20 i Hz
        assert (f0 > 0).float().mean() > 0.8 and abs(float(f0[f0 > 0].median()) / tone - 1) < 0.03
    assert prepare.main(["--data", str(data), "--out", str(tmp_path / "o"), "--no-features", "--frame-features"]) == 2
    assert "drop --no-features" in capsys.readouterr().err


def test_mel_shift_moves_content_along_the_mel_axis():
    mel = torch.zeros(3, 20, 5)
    mel[:, 8] = 1.0  # one bright band
    out = mel_shift(mel, torch.tensor([0.0, 2.0, -1.5]))
    assert out.shape == mel.shape
    torch.testing.assert_close(out[0], mel[0])  # no shift: unchanged
    assert out[1, 10].eq(1.0).all() and out[1, 8].eq(0.0).all()  # up two bins
    torch.testing.assert_close(out[2, 6], torch.full((5,), 0.5))  # down 1.5 bins: half in each neighbour
    torch.testing.assert_close(out[2, 7], torch.full((5,), 0.5))
    edge = mel_shift(torch.arange(20.0)[None, :, None].expand(1, 20, 2).contiguous(), torch.tensor([3.0]))
    assert edge[0, :4, 0].eq(0.0).all()  # the bottom bin repeats into the gap
