"""Config: strict from_dict, YAML overrides, round trips."""

from __future__ import annotations

import json

import pytest
import yaml

from vckit.config import Config, MelConfig, ModelConfig, VQConfig, from_dict, to_dict
from vckit.config_files import apply_override, load_config
from vckit.errors import ConfigError


def test_defaults_round_trip():
    cfg = Config()
    d = cfg.to_dict()
    assert Config.from_dict(d) == cfg
    assert Config.from_dict(json.loads(json.dumps(d))) == cfg  # tuples survive JSON as lists
    assert isinstance(d["model"]["content"]["downsample"], list)


def test_non_default_round_trip():
    cfg = Config.from_dict(
        {
            "mel": {"sample_rate": 16000, "fmax": 7600, "mel_norm": None},
            "model": {"content": {"downsample": [2, 1, 1, 1, 1, 1], "dim": 4}, "vq": {"enabled": True, "codebook_size": 64}},
            "train": {"betas": [0.8, 0.9], "lr": 1},
            "data": {"augment": {"noise_db": [-60, -40]}},
        }
    )
    assert cfg.mel.mel_norm is None and cfg.mel.fmax == 7600.0 and isinstance(cfg.mel.fmax, float)
    assert cfg.model.content.downsample == (2, 1, 1, 1, 1, 1)
    assert cfg.train.betas == (0.8, 0.9) and cfg.train.lr == 1.0
    assert cfg.data.augment.noise_db == (-60.0, -40.0)
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "d,name",
    [
        ({"modle": {}}, "modle"),
        ({"model": {"content": {"chanels": 3}}}, "model.content.chanels"),
        ({"train": {"lr": 1e-3, "learning_rate": 1e-3}}, "train.learning_rate"),
        ({"mel": {"hop": 256}}, "mel.hop"),
    ],
)
def test_unknown_key_is_an_error_naming_it(d, name):
    with pytest.raises(ConfigError, match=rf"unknown config key {name.replace('.', '[.]')}\b"):
        Config.from_dict(d)


@pytest.mark.parametrize(
    "d,where",
    [
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"steps": 1.5}}, "train.steps"),
        ({"train": {"deterministic": "yes"}}, "train.deterministic"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"model": {"vq": {"enabled": 1}}}, "model.vq.enabled"),
        ({"model": {"content": {"downsample": 2}}}, "model.content.downsample"),
        ({"train": {"betas": [0.9]}}, "train.betas"),
        ({"model": "big"}, "model"),
        ({"data": {"features": 3}}, "data.features"),
        ({"train": {"steps": True}}, "train.steps"),
    ],
)
def test_wrong_type_is_an_error_naming_the_field(d, where):
    with pytest.raises(ConfigError, match=where.replace(".", "[.]")):
        Config.from_dict(d)


def test_invalid_mel_values_are_config_errors():
    with pytest.raises(ConfigError, match="fmax"):
        Config.from_dict({"mel": {"fmax": 12000}})


def test_configs_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.lr = 1.0  # type: ignore[misc]


def write_yaml(tmp_path, d, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def test_yaml_and_overrides(tmp_path):
    p = write_yaml(tmp_path, {"train": {"lr": 1e-3, "steps": 10}, "model": {"vq": {"enabled": False}}})
    cfg = load_config(p)
    assert cfg.train.lr == 1e-3 and cfg.train.steps == 10 and not cfg.model.vq.enabled
    cfg = load_config(p, ["train.lr=2e-4", "model.vq.enabled=true", "model.content.downsample=[1, 2, 1, 1, 1, 1]", "data.features=/x/y", "mel.mel_norm=null"])
    assert cfg.train.lr == 2e-4
    assert cfg.model.vq.enabled is True
    assert cfg.model.content.downsample == (1, 2, 1, 1, 1, 1)
    assert cfg.data.features == "/x/y"
    assert cfg.mel.mel_norm is None
    assert cfg.train.steps == 10  # untouched values stay
    # an override creates sections the file does not have
    assert load_config(p, ["model.speaker.dim=64"]).model.speaker.dim == 64


def test_override_errors(tmp_path):
    p = write_yaml(tmp_path, {"train": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["train.lr"])
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(p, ["train.nope=3"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(p, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(p, ["train.lr.x=1"])


def test_apply_override_parses_yaml_values():
    d: dict = {}
    apply_override(d, "a.b.c=[1, 2]")
    apply_override(d, "a.d=off")
    apply_override(d, "e= 1.5")
    assert d == {"a": {"b": {"c": [1, 2]}, "d": False}, "e": 1.5}


def test_an_empty_override_is_the_empty_string_as_prepare_py_suggests(tmp_path):
    """`--set data.valid_manifest=''` reaches vckit as `data.valid_manifest=` once the shell has eaten the quotes."""
    for given in ("data.valid_manifest=", "data.valid_manifest=''", "data.valid_manifest= "):
        d: dict = {}
        apply_override(d, given)
        assert Config.from_dict(d).data.valid_manifest == ""


def test_an_empty_validation_manifest_says_how_to_train_without_one(tmp_path):
    from vckit.errors import VckitError
    from vckit.training.loop import validation_utterances

    empty = tmp_path / "valid.jsonl"
    empty.write_text("")
    with pytest.raises(VckitError, match=r"valid.jsonl is empty: .* --set data.valid_manifest=$"):
        validation_utterances(store=None, manifest=str(empty))
    assert validation_utterances(store=None, manifest="") == []


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"train": {"steps": 7}}))
    assert load_config(js).train.steps == 7
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_shipped_recipe_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for p in sorted((root / "recipes" / "shared_dev" / "conf").glob("*.yaml")):
        if p.name == "phone_student.yaml":
            continue  # not a VC model's config: tests/test_phone_student.py loads it
        cfg = load_config(p)
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_recipe_variants_are_small_overrides_of_one_base():
    """Each shared_dev variant is a ``base:`` override of at most 20 lines, and every chain ends in base.yaml."""
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[1] / "recipes" / "shared_dev" / "conf"
    standalone = {"base.yaml", "smoke.yaml", "phone_student.yaml"}  # the base, the tiny path check, another model's config
    for p in sorted(conf.glob("*.yaml")):
        if p.name in standalone:
            continue
        assert len(p.read_text().splitlines()) <= 20, f"{p.name} is a copy, not an override"
        chain, q = [p.name], p
        while (base := (yaml.safe_load(q.read_text()) or {}).get("base")) is not None:
            q = q.parent / base
            assert q.name not in chain, chain
            chain.append(q.name)
        assert chain[-1] == "base.yaml", f"{p.name}: {' -> '.join(chain)}"


def test_sub_dataclass_round_trip():
    m = ModelConfig(vq=VQConfig(enabled=True, decay=0.9))
    assert from_dict(ModelConfig, to_dict(m)) == m
    mel = MelConfig(n_mels=64)
    assert from_dict(MelConfig, to_dict(mel)) == mel
    assert mel.mismatch(MelConfig()) == ["n_mels: 64 vs 80"]


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    """PyYAML reads a bare ``1e-4`` as a string; configs and ``--set`` must read it as a number."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n  betas: [0.9, 99e-2]\n")
    cfg = load_config(p)
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.99)
    assert load_config(p, ["train.lr=1e-4"]).train.lr == 1e-4
    with pytest.raises(ConfigError, match="data.features"):
        load_config(p, ["data.features=1e3"])  # a number where a path is expected is still an error


def test_old_configs_with_removed_keys_still_load(caplog):
    """train.num_workers (never used) was written by older versions: it is dropped with a note, not an error."""
    d = to_dict(Config())
    assert "num_workers" not in d["train"]
    d["train"]["num_workers"] = 4
    with caplog.at_level("INFO", logger="vckit.config"):
        assert Config.from_dict(d) == Config()
    assert "num_workers is no longer used" in caplog.text
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(Config, {"train": {"num_workers": 4, "not_a_key": 1}})


def test_a_config_starts_from_its_base_and_overrides_key_by_key(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.yaml").write_text("model:\n  content:\n    dim: 8\n    channels: 64\ntrain:\n  lr: 0.001\n  batch_size: 4\n")
    (tmp_path / "conf" / "variant.yaml").write_text("base: base.yaml\nmodel:\n  content:\n    dim: 32\ntrain:\n  batch_size: 8\n")
    cfg = load_config(tmp_path / "conf" / "variant.yaml", ["train.lr=0.01"])
    assert (cfg.model.content.dim, cfg.model.content.channels) == (32, 64)
    assert (cfg.train.batch_size, cfg.train.lr) == (8, 0.01)
    (tmp_path / "conf" / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="base chain"):
        load_config(tmp_path / "conf" / "loop.yaml")
    (tmp_path / "conf" / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "conf" / "missing.yaml")


def test_the_background_config_is_the_shipped_one_trained_for_ever():
    """recipes/shared_dev/conf/forever.yaml: the shipped model's config, with only the run's length and saving changed."""
    import dataclasses
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    forever = load_config(repo / "recipes/shared_dev/conf/forever.yaml")
    shipped = Config.from_dict(json.loads((repo / "checkpoints/default/config.json").read_text())["config"])
    assert dataclasses.replace(forever.model, n_speakers=shipped.model.n_speakers) == shipped.model
    assert forever.mel == shipped.mel and forever.data == shipped.data
    assert forever.train.time_budget == 0 and forever.train.steps >= 10**7 and 0 < forever.train.ckpt_minutes <= 30
