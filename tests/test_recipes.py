"""Recipes: each prepare.py on a tiny fake corpus laid out exactly like the
real one (made of real speech, cut short), then the recipe's smoke config
end to end through ``vckit train``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO_ROOT
from vckit.audio import load_audio
from vckit.cli import main as vckit_main
from vckit.config import MelConfig
from vckit.data.features import FeatureStore
from vckit.data.manifest import read_manifest
from vckit.data.frame_features import load_projection
from vckit.data.prepare import split_speakers

SECONDS = 1.6  # each fake utterance: real speech, cut short so features are quick


def load_prepare(recipe: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{recipe}", REPO_ROOT / "recipes" / recipe / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def real_clip(data_dir: Path, corpus: str, speaker: str, i: int, sr: int) -> np.ndarray:
    """The i-th utterance of a real speaker, resampled to ``sr`` and cut to SECONDS."""
    files = sorted(p for p in (data_dir / corpus / speaker).iterdir() if p.suffix in (".wav", ".flac"))
    wav = load_audio(files[i % len(files)], sr)
    return wav[: int(SECONDS * sr)]


def write(path: Path, wav: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr)


def run_prepare(recipe: str, data: Path, out: Path, capsys, *args: str) -> tuple[str, list[dict], list[dict]]:
    """``python recipes/<recipe>/prepare.py --data DATA --out OUT ...``: (what it printed, train rows, valid rows)."""
    assert load_prepare(recipe).main(["--data", str(data), "--out", str(out), "--quiet", *args]) == 0
    return capsys.readouterr().out, read_manifest(out / "train.jsonl"), read_manifest(out / "valid.jsonl")


def smoke_train(recipe: str, cwd: Path, monkeypatch) -> Path:
    """``vckit train --config recipes/<recipe>/conf/smoke.yaml`` as a user runs it, from ``cwd``."""
    monkeypatch.chdir(cwd)
    assert vckit_main(["train", "--config", str(REPO_ROOT / "recipes" / recipe / "conf" / "smoke.yaml"), "--quiet", "--device", "cpu"]) == 0
    final = cwd / "runs" / recipe / "smoke" / "step-000000040"
    meta = json.loads((final / "config.json").read_text())
    assert meta["step"] == 40
    return final


# -- VCTK 0.92 --------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_vctk(tmp_path_factory, data_dir) -> Path:
    """VCTK-Corpus-0.92/: wav48_silence_trimmed/pXXX/pXXX_NNN_mic{1,2}.flac, txt/, speaker-info.txt.
    p315 has audio and no text, as in the real release."""
    root = tmp_path_factory.mktemp("vctk") / "VCTK-Corpus-0.92"
    info = ["ID  AGE  GENDER  ACCENTS  REGION COMMENTS "]
    for spk, gender, real in (("p225", "F", "p225"), ("p226", "M", "p226"), ("p227", "M", "p227"), ("p228", "F", "p228"), ("p315", "M", "p226")):
        info.append(f"{spk}  23  {gender}    English    Southern  England")
        for i in range(3):
            utt = f"{spk}_{i + 1:03d}"
            wav = real_clip(data_dir, "vctk", real, i, 48000)
            write(root / "wav48_silence_trimmed" / spk / f"{utt}_mic1.flac", wav, 48000)
            write(root / "wav48_silence_trimmed" / spk / f"{utt}_mic2.flac", 0.5 * wav, 48000)
            if spk != "p315":
                (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
                (root / "txt" / spk / f"{utt}.txt").write_text(f"Sentence {i} of {spk}.\n")
    (root / "speaker-info.txt").write_text("\n".join(info) + "\n")
    (root / "README.txt").write_text("fake VCTK 0.92 for tests\n")
    return root


def test_vctk_prepare_and_smoke(fake_vctk, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cache" / "vctk"
    # the folder the user unzipped into (one level above the corpus) is accepted too
    printed, train, valid = run_prepare("vctk", fake_vctk.parent, out, capsys, "--workers", "1")
    assert "train: 9 files, 3 speakers" in printed and "valid: 6 files, 2 speakers (F 1, M 1)" in printed
    assert {r["speaker"] for r in valid} == {"p226", "p228"}  # held out by the recipe's list
    assert {r["speaker"] for r in train} == {"p225", "p227", "p315"}
    assert all(r["utt_id"].endswith("_mic1") for r in train + valid)
    by_id = {r["utt_id"]: r for r in train}
    assert by_id["p225_002_mic1"]["text"] == "Sentence 1 of p225." and by_id["p225_002_mic1"]["gender"] == "F"
    assert by_id["p315_001_mic1"]["text"] == ""
    assert 0.5 < by_id["p225_001_mic1"]["duration"] <= SECONDS + 0.01
    index = json.loads((out / "features" / "index.json").read_text())
    assert len(index["utterances"]) == 15 and not index["skipped"]

    _, train, _ = run_prepare("vctk", fake_vctk, tmp_path / "both", capsys, "--mic", "both", "--no-features")
    assert len(train) == 18

    smoke_train("vctk", tmp_path, monkeypatch)


def test_vctk_prepare_errors(tmp_path, capsys):
    prep = load_prepare("vctk")
    assert prep.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert prep.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "wav48_silence_trimmed" in capsys.readouterr().err


# -- LibriTTS ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_libritts(tmp_path_factory, data_dir) -> Path:
    """LibriTTS/: <subset>/<spk>/<chapter>/<spk>_<chapter>_<para>_<sent>.wav + .normalized.txt
    + .original.txt, speakers.tsv; 24 kHz WAV. One utterance of 0.5 s (left out by --min-seconds)."""
    root = tmp_path_factory.mktemp("libritts") / "LibriTTS"
    tsv = ["READER\tGENDER\tSUBSET\tNAME"]
    layout = [("train-clean-100", "1025", "F"), ("train-clean-100", "1060", "M"), ("train-clean-360", "1093", "F"), ("train-clean-360", "6415", "M"), ("dev-clean", "1088", "F")]
    for subset, spk, gender in layout:
        tsv.append(f"{spk}\t{gender}\t{subset}\tReader {spk}")
        chapter = "92814"
        for i in range(3):
            stem = f"{spk}_{chapter}_{i:06d}_000000"
            wav = real_clip(data_dir, "librispeech_more", spk, i, 24000)
            if spk == "1060" and i == 2:
                wav = wav[:12000]  # 0.5 s
            d = root / subset / spk / chapter
            write(d / f"{stem}.wav", wav, 24000)
            (d / f"{stem}.normalized.txt").write_text(f"Utterance {i} of reader {spk}.")
            (d / f"{stem}.original.txt").write_text(f"Utterance {i} of reader {spk}.")
        (root / subset / spk / chapter / f"{spk}_{chapter}.book.tsv").write_text("")
    (root / "speakers.tsv").write_text("\n".join(tsv) + "\n")
    return root


def test_libritts_prepare_and_smoke(fake_libritts, tmp_path, monkeypatch, capsys):
    printed, train, valid = run_prepare("libritts", fake_libritts.parent, tmp_path / "cache" / "libritts", capsys, "--workers", "1")
    assert "train: 11 files, 4 speakers (F 2, M 2)" in printed
    assert {r["speaker"] for r in valid} == {"1088"}  # dev-clean validates
    assert {r["corpus"] for r in train} == {"libritts/train-clean-100", "libritts/train-clean-360"}
    assert all(r["duration"] >= 1.0 for r in train)  # the 0.5 s utterance is out
    assert train[0]["text"].startswith("Utterance 0 of reader") and train[0]["gender"] in ("F", "M")

    # one subset only, and no dev-clean: training speakers are held out instead
    one = tmp_path / "one"
    assert load_prepare("libritts").main(["--data", str(fake_libritts), "--out", str(one), "--subsets", "train-clean-360", "--valid-subset", "", "--n-valid", "1", "--no-features"]) == 0
    assert {r["speaker"] for r in read_manifest(one / "train.jsonl")} == {"1093", "6415"}  # too few to hold one out
    assert (one / "valid.jsonl").read_text() == ""

    smoke_train("libritts", tmp_path, monkeypatch)


# -- your own recordings -------------------------------------------------------
@pytest.fixture(scope="module")
def fake_custom(tmp_path_factory, data_dir) -> Path:
    """my_corpus/<speaker>/[session/]*.wav at mixed rates, one corrupt and one silent file."""
    root = tmp_path_factory.mktemp("custom") / "my_corpus"
    for spk, (corpus, real, sr) in {"alice": ("vcc2016", "SF1", 16000), "bob": ("vcc2016", "SM1", 22050), "carol": ("vctk", "p228", 44100), "dave": ("vctk", "p226", 16000)}.items():
        for i in range(3):
            sub = root / spk / ("session2" if i == 2 else "")
            write(sub / f"{spk}_{i}.wav", real_clip(data_dir, corpus, real, i, sr), sr)
    (root / "alice" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    write(root / "bob" / "silence.wav", np.zeros(32000, dtype=np.float32), 16000)
    (root / "notes.txt").write_text("not audio")
    return root


def test_custom_prepare_folder_csv_parallel_and_smoke(fake_custom, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "cache" / "custom"
    _, train, valid = run_prepare("custom", fake_custom, out, capsys, "--workers", "1", "--valid-speakers", "dave")
    assert "broken.wav" in caplog.text  # unreadable: skipped with a warning
    assert {r["speaker"] for r in train} == {"alice", "bob", "carol"} and {r["speaker"] for r in valid} == {"dave"}
    assert len(train) == 10  # 9 + the silent file, which only the feature cache can tell
    seq = json.loads((out / "features" / "index.json").read_text())
    assert [Path(p).name for p in seq["skipped"]] == ["silence.wav"]

    # the same corpus as a CSV (relative paths), features in two processes: the same cache
    csv_path = fake_custom.parent / "corpus.csv"
    lines = ["path,speaker,text"] + [f"{Path(r['path']).relative_to(fake_custom.parent)},{r['speaker']},hello" for r in train + valid]
    csv_path.write_text("\n".join(lines) + "\n")
    par = tmp_path / "par"
    _, par_train, _ = run_prepare("custom", csv_path, par, capsys, "--workers", "2", "--valid-speakers", "dave")
    idx = json.loads((par / "features" / "index.json").read_text())
    assert [u["frames"] for u in idx["utterances"]] == [u["frames"] for u in seq["utterances"]]
    assert [Path(p).name for p in idx["skipped"]] == ["silence.wav"]
    np.testing.assert_array_equal(np.load(par / "features" / "mels.npy"), np.load(out / "features" / "mels.npy"))
    assert par_train[0]["text"] == "hello"

    assert load_prepare("custom").main(["--data", str(fake_custom / "notes.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "folder of <speaker>/ folders or a .csv" in capsys.readouterr().err

    smoke_train("custom", tmp_path, monkeypatch)


def test_custom_prepare_with_frame_features(fake_custom, tmp_path, monkeypatch, capsys):
    """--frame-features: F0 and the phonetic teacher beside the mels, the PCA fitted on the training speakers only."""
    import vckit.data.frame_features as ff

    fitted_on = []
    real = ff.cache_frame_features

    def spy(folder, **kw):
        fitted_on.append(set(kw["fit_paths"]))
        return real(folder, **kw)

    monkeypatch.setattr(ff, "cache_frame_features", spy)
    out = tmp_path / "cache"
    printed, train, valid = run_prepare("custom", fake_custom, out, capsys, "--workers", "1", "--valid-speakers", "dave", "--frame-features")
    assert "frame features: F0" in printed
    assert fitted_on == [{r["path"] for r in train}] and not fitted_on[0] & {r["path"] for r in valid}
    store = FeatureStore.load(out / "features", MelConfig())
    n = store.mels.shape[0]
    assert store.extra["f0"].shape == (n,) and store.extra["phonetic"].shape == (n, 64)
    assert store.extra["posteriors_idx"].shape == store.extra["posteriors_p"].shape == (n, 3)
    assert load_projection(out / "features")["proj"].shape == (64, 256)

    def median_f0(speaker: str) -> float:
        f0 = torch.cat([store.extra["f0"][u["offset"] : u["offset"] + u["frames"]] for u in store.utterances if u["speaker"] == speaker]).float()
        return float(f0[f0 > 0].median())

    assert median_f0("alice") > 1.4 * median_f0("bob")  # SF1's voice is far higher than SM1's: each F0 is its utterance's

    # prepared again without them: no stale arrays beside the new mels
    run_prepare("custom", fake_custom, out, capsys, "--workers", "1", "--valid-speakers", "dave")
    assert not list((out / "features").glob("*.npy.tmp")) and sorted(p.name for p in (out / "features").glob("*.npy")) == ["mels.npy"]
    assert not (out / "features" / "phonetic.json").exists()

    assert load_prepare("custom").main(["--data", str(fake_custom), "--out", str(tmp_path / "x"), "--no-features", "--frame-features"]) == 2
    assert "beside the mel features" in capsys.readouterr().err


def test_split_speakers_rules():
    rows = [{"speaker": s, "path": f"{s}.wav"} for s in "abcdefgh"]
    train, valid = split_speakers(rows, valid=["c", "zz"])
    assert {r["speaker"] for r in valid} == {"c"} and len(train) == 7
    train, valid = split_speakers(rows, n_valid=8)  # at most a quarter
    assert len(valid) == 2 and not {r["speaker"] for r in train} & {r["speaker"] for r in valid}
    assert split_speakers(rows[:3], n_valid=1)[1] == []  # fewer than four speakers: none held out
