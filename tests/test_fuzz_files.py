"""Fuzzed files a user hands vckit besides audio: JSONL and CSV manifests, ``--set``
overrides and config files, a checkpoint's ``config.json``, speaker profiles.

Each gives a valid result or one :class:`VckitError` line: never another exception
(a traceback at the user), and never a partial file. Cases are drawn anew on each run
(see ``tests/test_fuzz.py``: the seed is printed, ``VCKIT_FUZZ_SEED=N`` repeats it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vckit.errors import VckitError

from test_fuzz import error_outcome, fuzz_settings, only_names

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def _json(v) -> str:
    return json.dumps(v, allow_nan=True, ensure_ascii=False)


# -- manifests ----------------------------------------------------------------------------
MANIFEST_LINES = st.one_of(
    st.builds(lambda p, s: _json({"path": p, "speaker": s}), TEXT, TEXT),  # a well-formed row
    st.builds(lambda d: _json(d), st.dictionaries(st.sampled_from(["path", "speaker", "text", "corpus", "x"]), JSON_VALUE, max_size=4)),
    JSON_VALUE.map(_json),  # a JSON value that is not a row
    TEXT,  # anything
    st.sampled_from(["", "   ", "# a comment", "{", "\ufeff{\"path\": \"a.wav\", \"speaker\": \"s\"}", "null"]),
)


@fuzz_settings(80)
@given(lines=st.lists(MANIFEST_LINES, max_size=8), raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzzed_jsonl_manifests_read_or_raise_one_line(tmp_path_factory, lines, raw):
    from vckit.data.manifest import read_manifest

    path = tmp_path_factory.mktemp("jsonl") / "m.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines), encoding="utf-8")
    try:
        rows = read_manifest(path)
    except VckitError as e:
        error_outcome(e)
        return
    assert rows and all(isinstance(r, dict) and isinstance(r["path"], str) and "speaker" in r for r in rows)


CSV_CELLS = st.one_of(TEXT, st.sampled_from(["a.wav", "sub/b.flac", "", '"', "spk", "path", "1", "x,y"]))


@fuzz_settings(60)
@given(rows=st.lists(st.lists(CSV_CELLS, max_size=4), max_size=6), header=st.booleans(), raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzzed_csv_manifests_read_or_raise_one_line(tmp_path_factory, rows, header, raw):
    import csv

    from vckit.data.manifest import manifest_from_csv

    folder = tmp_path_factory.mktemp("csv")
    (folder / "a.wav").write_bytes(b"")  # a name a row may point at
    path = folder / "m.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if header:
                w.writerow(["path", "speaker"])
            w.writerows(rows)
    try:
        out = manifest_from_csv(path, folder)
    except VckitError as e:
        error_outcome(e)
        return
    assert all(isinstance(r, dict) and isinstance(r.get("path"), str) for r in out)


# -- config files and --set ----------------------------------------------------------------
KEYS = ["train.steps", "train.lr", "train.batch_size", "train.ckpt_every", "train.amp", "model.content.dim", "model.content.downsample",
        "model.vq.enabled", "model.vq.codebook_size", "data.segment_frames", "data.augment.noise_db", "mel.n_mels", "mel.fmax",
        "train", "model.content", "nope.key", "train.steps.x", "", ".", "train..lr"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "1e-4", "3", "true", "null", "[1, 2]", "[", "{a: 1}", "'x", "bf16", "nan", ".inf", "''", "1" * 40, "!!python/object:os.system ls", "&a [*a]", "%", ":"]), TEXT)


@fuzz_settings(80)
@given(overrides=st.lists(st.builds(lambda k, v, sep: f"{k}{sep}{v}", st.sampled_from(KEYS), VALUES, st.sampled_from(["=", "=", ":", ""])), max_size=3))
def test_fuzzed_set_overrides_load_or_raise_one_line(tmp_path_factory, overrides):
    from vckit.config import Config
    from vckit.config_files import load_config

    base = tmp_path_factory.mktemp("set") / "c.yaml"
    base.write_text("train:\n  steps: 10\n")
    try:
        cfg = load_config(base, overrides)
    except VckitError as e:
        error_outcome(e)
        return
    assert isinstance(cfg, Config) and Config.from_dict(cfg.to_dict()) == cfg


@fuzz_settings(60)
@given(text=st.one_of(TEXT, st.builds(lambda d: _json(d), st.dictionaries(st.sampled_from(["train", "model", "data", "mel", "base", "x"]), JSON_VALUE, max_size=3))),
       raw=st.one_of(st.none(), st.binary(max_size=48)))
def test_fuzzed_config_files_load_or_raise_one_line(tmp_path_factory, text, raw):
    from vckit.config_files import load_config

    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except VckitError as e:
        error_outcome(e)


# -- a checkpoint's config.json ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from conftest import TINY_MODEL

    from vckit.checkpoint import save_checkpoint
    from vckit.config import Config
    from vckit.models.vc import build_model, inference_state_dict

    torch.manual_seed(0)
    cfg = Config.from_dict({"model": TINY_MODEL})
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", cfg, inference_state_dict(model), step=3, record_sha256=True)


def _paths(v, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*prefix, i))


@fuzz_settings(60)
@given(data=st.data())
def test_fuzzed_checkpoint_configs_load_or_raise_one_line(tiny_checkpoint, tmp_path_factory, capsys, data):
    """Mutate one place of config.json (drop it, or put any JSON value there), or its bytes:
    ``vckit info`` and ``vckit.load`` read it or say what is wrong in one line, exit 2."""
    import vckit
    from vckit.cli import main

    folder = tmp_path_factory.mktemp("mut") / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    meta = json.loads((folder / "config.json").read_text())
    how = data.draw(st.sampled_from(["replace", "drop", "bytes"]))
    if how == "bytes":
        raw = (folder / "config.json").read_bytes()
        cut = data.draw(st.integers(0, len(raw)))
        (folder / "config.json").write_bytes(raw[:cut] + data.draw(st.binary(max_size=8)))
    else:
        places = [p for p, _ in _paths(meta) if p]
        place = data.draw(st.sampled_from(places))
        parent = meta
        for k in place[:-1]:
            parent = parent[k]
        if how == "drop":
            parent.pop(place[-1]) if isinstance(parent, dict) else parent.pop(place[-1])
        else:
            parent[place[-1]] = data.draw(JSON_VALUE)
        (folder / "config.json").write_text(_json(meta))
    code = main(["info", str(folder)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err  # 3 is a bug's exit
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    try:
        vckit.load(folder, vocoder="griffinlim", device="cpu")
    except VckitError as e:
        error_outcome(e)


# -- speaker profiles ------------------------------------------------------------------------------
@fuzz_settings(60)
@given(how=st.sampled_from(["truncate", "flip", "metadata", "tensor"]), where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=16),
       meta=JSON_VALUE, name=TEXT)
def test_fuzzed_speaker_profiles_load_or_raise_one_line(tmp_path_factory, capsys, how, where, junk, meta, name):
    from safetensors.torch import save_file

    from vckit.cli import main
    from vckit.speakers import list_profiles, load_profile, new_profile, save_profile

    bank = tmp_path_factory.mktemp("bank")
    path = save_profile(bank, new_profile("alice", torch.randn(128), "abc", ["a.wav"], 3.0, 120.0))
    raw = bytearray(path.read_bytes())
    at = int(where * len(raw))
    if how == "truncate":
        path.write_bytes(bytes(raw[:at]))
    elif how == "flip":
        raw[at : at + len(junk)] = junk
        path.write_bytes(bytes(raw))
    elif how == "metadata":
        save_file({"embedding": torch.randn(128)}, str(path), metadata={"name": name, "model_id": name, "meta": _json(meta)})
    else:
        save_file({"embedding": torch.randn(3, 2), "other": torch.zeros(1)}, str(path), metadata={"meta": _json(meta) if isinstance(meta, dict) else "{}"})
    try:
        prof = load_profile(bank, "alice")
    except VckitError as e:
        error_outcome(e)
    else:
        assert prof.embedding.dim() == 1 and isinstance(prof.meta, dict) and isinstance(prof.model_id, str)
        assert prof.f0_median is None or prof.f0_median > 0
    assert all(p.name for p in list_profiles(bank))  # a broken profile is left out of the list, never raised
    assert main(["speakers", "--bank", str(bank)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert only_names(bank) == ["alice.safetensors"]  # reading never writes
