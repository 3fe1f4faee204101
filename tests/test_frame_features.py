"""Per-frame features beside the mels: computing them with a given teacher
projection, and carrying them through merges and subsets of feature caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vckit.audio import load_audio
from vckit.config import MelConfig, to_dict
from vckit.data.features import FeatureStore, cache_features
from vckit.errors import VckitError
from vckit.data.frame_features import (
    FRAME_ARRAYS,
    cache_frame_features,
    check_projection,
    load_projection,
    project,
    quantize_phonetic,
    same_projection,
)
from vckit.models.teacher import HIDDEN_DIM, PhoneticTeacher
from vckit.data.features import merge_feature_caches, subset_feature_cache

N_MELS = MelConfig().n_mels


# -- computing them -------------------------------------------------------------
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory, data_dir) -> Path:
    """A mel cache of four real utterances of two speakers (~14 s)."""
    folder = tmp_path_factory.mktemp("real") / "features"
    rows = [{"path": str(p), "speaker": spk} for spk in ("SF1", "SM1") for p in sorted((data_dir / "vcc2016" / spk).glob("*.wav"))[:2]]
    cache_features(rows, MelConfig(), folder, progress=False)
    return folder


def copy_mels(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("mels.npy", "index.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def random_projection(dims: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"mean": rng.normal(0, 0.5, HIDDEN_DIM).astype(np.float32), "proj": rng.normal(0, 0.1, (dims, HIDDEN_DIM)).astype(np.float32)}


def test_a_given_projection_is_written_and_used_exactly(real_cache, tmp_path):
    given = random_projection(5)
    folder = copy_mels(real_cache, tmp_path / "given")
    summary = cache_frame_features(folder, projection=given, dims=64, fit_paths=[], threads=1, progress=False)
    assert 0.0 < summary["explained_variance"] < 1.0
    meta = json.loads((folder / "phonetic.json").read_text())
    assert meta["dims"] == 5 and meta["fitted"] is False
    back = load_projection(folder)
    np.testing.assert_array_equal(back["mean"], given["mean"])  # written as is, not refitted
    np.testing.assert_array_equal(back["proj"], given["proj"])

    index = json.loads((folder / "index.json").read_text())
    phon = np.load(folder / "phonetic.npy")
    assert phon.shape == (index["frames"], 5) and phon.dtype == np.uint8
    # utterance 1 projected by hand with the given projection: the cached rows are those
    u = index["utterances"][1]
    wav = load_audio(u["path"], MelConfig().sample_rate, min_seconds=0.1)
    hidden = PhoneticTeacher(threads=1).frames(wav, MelConfig().sample_rate, u["frames"], MelConfig().hop_length).hidden
    expect = quantize_phonetic(project(hidden.astype(np.float16).astype(np.float32), given))  # the cache holds the teacher in fp16
    got = phon[u["offset"] : u["offset"] + u["frames"]]
    diff = np.abs(got.astype(int) - expect.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # up to a rounding step

    # the same audio with a fitted projection (of 5 dims) gives other features
    fitted = copy_mels(real_cache, tmp_path / "fitted")
    cache_frame_features(fitted, dims=5, threads=1, progress=False)
    assert json.loads((fitted / "phonetic.json").read_text())["fitted"] is True
    assert not same_projection(load_projection(fitted), given)
    assert not np.array_equal(np.load(fitted / "phonetic.npy"), phon)
    for name in ("f0", "posteriors_idx", "posteriors_p"):  # what does not depend on the projection is the same
        np.testing.assert_array_equal(np.load(fitted / f"{name}.npy"), np.load(folder / f"{name}.npy"))


def test_a_bad_projection_is_one_clear_error(real_cache, tmp_path):
    folder = copy_mels(real_cache, tmp_path / "c")
    with pytest.raises(VckitError, match=r"proj \(dims, 256\)"):
        cache_frame_features(folder, projection={"mean": np.zeros(256), "proj": np.zeros((4, 128))}, progress=False)
    with pytest.raises(VckitError, match="'mean' and 'proj'"):
        cache_frame_features(folder, projection={"proj": np.zeros((4, 256))}, progress=False)
    assert not (folder / "f0.npy").exists()


def test_same_projection_allows_fp16_rounding_only():
    p = random_projection(6)
    half = {k: torch.from_numpy(v).half().float().numpy() for k, v in p.items()}  # what an fp16 checkpoint carries
    assert same_projection(half, p) and same_projection(p, half)
    other = random_projection(6, seed=1)
    assert not same_projection(other, p)
    assert not same_projection(random_projection(5), p)
    nudged = {"mean": p["mean"], "proj": p["proj"] * 1.01}
    assert not same_projection(nudged, p)
    assert check_projection(half)["proj"].dtype == np.float32


# -- carrying them -----------------------------------------------------------------
def fake_cache(folder: Path, lengths: list[int], start: int, *, projection: dict | None = None, arrays=FRAME_ARRAYS) -> Path:
    """A cache whose per-frame arrays say which global frame they belong to:
    frame ``start + i`` has f0 = that number, and the other arrays are functions of it."""
    folder.mkdir(parents=True)
    total = sum(lengths)
    g = np.arange(start, start + total)
    utts, off = [], 0
    for k, n in enumerate(lengths):
        utts.append({"path": f"/audio/{start + off}.wav", "speaker": f"s{k % 2}", "offset": off, "frames": n})
        off += n
    np.save(folder / "mels.npy", (g[:, None] + np.arange(N_MELS)[None]).astype(np.uint8))
    index = {"mel": to_dict(MelConfig()), "quant": [0, 1], "frames": total, "utterances": utts, "skipped": []}
    (folder / "index.json").write_text(json.dumps(index))
    values = {
        "f0": g.astype(np.float16),
        "phonetic": ((g[:, None] * 7 + np.arange(4)[None]) % 256).astype(np.uint8),
        "posteriors_idx": ((g[:, None] * 3 + np.arange(3)[None]) % 191).astype(np.uint8),
        "posteriors_p": ((g[:, None] * 5 + np.arange(3)[None]) % 256).astype(np.uint8),
    }
    for name in arrays:
        np.save(folder / f"{name}.npy", values[name])
    if "phonetic" in arrays:
        p = projection or random_projection(4)
        (folder / "phonetic.json").write_text(json.dumps({"dims": 4, "mean": p["mean"].tolist(), "proj": p["proj"].tolist()}))
    return folder


def frame_numbers(folder: Path) -> np.ndarray:
    return np.load(folder / "f0.npy").astype(np.int64)


def assert_aligned(folder: Path) -> None:
    """Every per-frame array of ``folder`` matches its mels, row for row (same global frame)."""
    mels = np.load(folder / "mels.npy")
    g = frame_numbers(folder)
    assert len(g) == len(mels) == json.loads((folder / "index.json").read_text())["frames"]
    np.testing.assert_array_equal(mels[:, 0], (g % 256).astype(np.uint8))
    np.testing.assert_array_equal(np.load(folder / "phonetic.npy")[:, 1], ((g * 7 + 1) % 256).astype(np.uint8))
    np.testing.assert_array_equal(np.load(folder / "posteriors_idx.npy")[:, 2], ((g * 3 + 2) % 191).astype(np.uint8))
    np.testing.assert_array_equal(np.load(folder / "posteriors_p.npy")[:, 0], ((g * 5) % 256).astype(np.uint8))


def test_merge_and_subset_keep_the_frame_features_aligned(tmp_path):
    proj = random_projection(4)
    a = fake_cache(tmp_path / "a", [30, 12, 50], 0, projection=proj)
    b = fake_cache(tmp_path / "b", [20, 41], 1000, projection={k: torch.from_numpy(v).half().float().numpy() for k, v in proj.items()})
    merged = tmp_path / "merged"
    index = merge_feature_caches([a, b], merged)
    assert index["frames"] == 153 and len(index["utterances"]) == 5
    assert sorted(p.name for p in merged.iterdir()) == ["f0.npy", "index.json", "mels.npy", "phonetic.json", "phonetic.npy", "posteriors_idx.npy", "posteriors_p.npy"]
    assert_aligned(merged)
    np.testing.assert_array_equal(frame_numbers(merged), np.r_[np.arange(92), np.arange(1000, 1061)])
    for u in index["utterances"]:  # each utterance's rows are its own frames
        assert frame_numbers(merged)[u["offset"]] == int(Path(u["path"]).stem)
    assert (merged / "phonetic.json").read_text() == (a / "phonetic.json").read_text()  # the first input's projection
    store = FeatureStore.load(merged, MelConfig())
    assert sorted(store.extra) == sorted(FRAME_ARRAYS) and store.extra["phonetic"].shape == (153, 4)

    keep = {index["utterances"][i]["path"] for i in (1, 3)}
    sub = tmp_path / "sub"
    sindex = subset_feature_cache(merged, keep, sub)
    assert [u["frames"] for u in sindex["utterances"]] == [12, 20] and sindex["frames"] == 32
    assert_aligned(sub)
    np.testing.assert_array_equal(frame_numbers(sub), np.r_[np.arange(30, 42), np.arange(1000, 1020)])
    assert load_projection(sub)["proj"].tolist() == load_projection(a)["proj"].tolist()
    assert FeatureStore.load(sub, MelConfig()).extra["f0"].shape == (32,)
    assert not list(sub.glob("*.tmp")) and not list(merged.glob("*.tmp"))

    # only some arrays, or none, when asked
    subset_feature_cache(merged, keep, tmp_path / "f0_only", frame_features=("f0",))
    assert sorted(p.name for p in (tmp_path / "f0_only").iterdir()) == ["f0.npy", "index.json", "mels.npy"]
    merge_feature_caches([a, b], tmp_path / "plain", frame_features=())
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["index.json", "mels.npy"]


def test_merging_caches_with_different_frame_features_is_refused(tmp_path):
    a = fake_cache(tmp_path / "a", [10, 20], 0)
    plain = fake_cache(tmp_path / "plain", [15], 100, arrays=())
    with pytest.raises(VckitError, match=r"has f0.npy but .*plain has not"):
        merge_feature_caches([a, plain], tmp_path / "m")
    with pytest.raises(VckitError, match=r"plain has no f0.npy"):
        merge_feature_caches([a, plain], tmp_path / "m", frame_features=("f0",))
    with pytest.raises(VckitError, match="unknown per-frame array 'pitch'"):
        merge_feature_caches([a, a], tmp_path / "m", frame_features=("pitch",))
    # another projection of the teacher: the phonetic features cannot share a cache, the rest can
    other = fake_cache(tmp_path / "other", [7], 200, projection=random_projection(4, seed=3))
    with pytest.raises(VckitError, match="project the phonetic teacher differently"):
        merge_feature_caches([a, other], tmp_path / "m")
    merge_feature_caches([a, other], tmp_path / "m", frame_features=("f0", "posteriors_idx", "posteriors_p"))
    assert not (tmp_path / "m" / "phonetic.npy").exists() and not (tmp_path / "m" / "phonetic.json").exists()
    # an array of the wrong length, or another top-k
    short = fake_cache(tmp_path / "short", [9], 300)
    np.save(short / "f0.npy", np.zeros(5, np.float16))
    with pytest.raises(VckitError, match="f0.npy has 5 frames, the index 9"):
        merge_feature_caches([a, short], tmp_path / "m")
    top5 = fake_cache(tmp_path / "top5", [9], 400)
    np.save(top5 / "posteriors_p.npy", np.zeros((9, 5), np.uint8))
    with pytest.raises(VckitError, match="store posteriors_p.npy differently"):
        merge_feature_caches([a, top5], tmp_path / "m")
    with pytest.raises(VckitError, match="in place"):
        subset_feature_cache(a, set(), a)
    with pytest.raises(VckitError, match="into one of them"):
        merge_feature_caches([a, plain], plain, frame_features=())


def test_an_empty_shard_needs_no_frame_features_and_stale_arrays_go(tmp_path):
    a = fake_cache(tmp_path / "a", [10, 20], 0)
    empty = fake_cache(tmp_path / "empty", [], 50, arrays=())
    index = merge_feature_caches([empty, a], tmp_path / "m")
    assert index["frames"] == 30
    assert_aligned(tmp_path / "m")
    # merged again without frame features into the same folder: the old arrays do not outlive the mels
    merge_feature_caches([empty, a], tmp_path / "m", frame_features=())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["index.json", "mels.npy"]
