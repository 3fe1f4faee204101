"""Every numeric setting of every config has a range, and a value outside it is one ConfigError naming the key.

The settings are found by walking the dataclasses, so a setting added later
without a range fails ``test_every_numeric_setting_has_a_range``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest

from vckit.cli import main
from vckit.config import Config, OneOf, Range, from_dict
from vckit.errors import ConfigError
from vckit.models.verifier import SVConfig
from vckit.training.finetune import FinetuneConfig
from vckit.training.phone_student import StudentConfig
from vckit.training.vocoder import VocoderConfig

REPO = Path(__file__).resolve().parent.parent
# every config a user writes or a checkpoint carries, by the name of its file kind
ROOTS = {"vc": Config, "vocoder": VocoderConfig, "student": StudentConfig, "verifier": SVConfig, "finetune": FinetuneConfig}


def _settings(cls: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, type) of every leaf setting of dataclass ``cls``; a path step is a field name or a tuple index."""
    out = []
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _settings(tp, (*path, f.name))
        else:
            out += _leaves(tp, getattr(defaults, f.name), (*path, f.name))
    return out


def _leaves(tp: Any, default: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Any]]:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return _leaves(args[0], default[0], (*path, 0)) if default else []
        return [leaf for i, a in enumerate(args) for leaf in _leaves(a, default[i], (*path, i))]
    return [(path, tp)]


def _rules(tp: Any) -> list[Any]:
    return [r for r in getattr(tp, "__metadata__", ()) if isinstance(r, (Range, OneOf))] if typing.get_origin(tp) is Annotated else []


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _bad_values(tp: Any) -> list[Any]:
    """Values just outside each rule of ``tp``."""
    bad: list[Any] = []
    for r in _rules(tp):
        if isinstance(r, OneOf):
            bad.append("not-a-choice")
            continue
        if r.lo is not None:
            bad.append(r.lo if r.lo_open else r.lo - 1)
        if r.hi is not None:
            bad.append(r.hi if r.hi_open else r.hi + 1)
        if r.odd:
            bad.append(int(max(r.lo or 0, 0)) // 2 * 2 + 2)
        if _base(tp) is float:
            bad.append(float("nan"))
    return [type(v)(v) if _base(tp) is not float else float(v) for v in bad]


def _key(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def _nested(root: Any, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The smallest config dict of ``root`` with the setting at ``path`` set to ``value``.

    Tuple indices come after the last field name: the whole list is given, with one element changed."""
    names = [p for p in path if isinstance(p, str)]
    index = path[len(names) :]
    if index:
        obj = root()
        for n in names:
            obj = getattr(obj, n)
        whole = json.loads(json.dumps(obj))  # tuples of tuples as lists of lists
        inner = whole
        for i in index[:-1]:
            inner = inner[i]
        inner[index[-1]] = value
        value = whole
    for n in reversed(names):
        value = {n: value}
    return value


CASES = [
    pytest.param(name, path, value, id=f"{name}:{_key(path)}={value!r}")
    for name, root in ROOTS.items()
    for path, tp in _settings(root)
    for value in _bad_values(tp)
]


def test_every_numeric_setting_has_a_range():
    unguarded = [
        f"{name}:{_key(path)}"
        for name, root in ROOTS.items()
        for path, tp in _settings(root)
        if _base(tp) in (int, float) and not any(isinstance(r, Range) for r in _rules(tp))
    ]
    assert unguarded == []
    assert len(CASES) > 250  # the walk reached the settings (about 200 of them, one or more bad values each)


@pytest.mark.parametrize("name", ROOTS)
def test_the_defaults_are_inside_their_ranges(name):
    root = ROOTS[name]
    assert from_dict(root, {}) == root()
    assert from_dict(root, json.loads(json.dumps(dataclasses.asdict(root())))) == root()


@pytest.mark.parametrize(("name", "path", "value"), CASES)
def test_a_value_out_of_range_is_one_error_naming_the_key_and_the_range(name, path, value):
    with pytest.raises(ConfigError) as e:
        from_dict(ROOTS[name], _nested(ROOTS[name], path, value))
    msg = str(e.value)
    assert msg.startswith(f"{_key(path)} must be "), msg
    assert "\n" not in msg


def test_lists_of_the_wrong_length_and_crossed_bounds_are_errors():
    with pytest.raises(ConfigError, match=r"model.content.downsample must give one stride per block: 5 strides for 6 blocks"):
        Config.from_dict({"model": {"content": {"downsample": [1, 2, 1, 1, 1]}}})
    with pytest.raises(ConfigError, match=r"train.betas: expected 2 values, got 3"):
        Config.from_dict({"train": {"betas": [0.9, 0.99, 0.999]}})
    with pytest.raises(ConfigError, match=r"noise_db must be \[low, high\]"):
        Config.from_dict({"data": {"augment": {"noise_db": [-40, -70]}}})


def test_a_config_built_in_python_is_checked_too():
    with pytest.raises(ConfigError, match=r"^finetune.steps must be >= 1, got 0$"):
        FinetuneConfig(steps=0)
    with pytest.raises(ConfigError, match=r"^finetune.replay_fraction must be in \[0, 1\), got 1.0$"):
        FinetuneConfig(replay_fraction=1.0)


# -- the three ways a bad value arrives, through the CLI ----------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.ckpt_every=0", "error: train.ckpt_every must be >= 1, got 0"),
        ("train.batch_size=0", "error: train.batch_size must be >= 1, got 0"),
        ("train.lr=-1", "error: train.lr must be > 0, got -1.0"),
        ("train.steps=-5", "error: train.steps must be >= 1, got -5"),
        ("data.segment_frames=0", "error: data.segment_frames must be >= 8, got 0"),
        ("model.vq.codebook_size=0", "error: model.vq.codebook_size must be >= 1, got 0"),
        ("model.decoder.channels=0", "error: model.decoder.channels must be >= 1, got 0"),
        ("data.augment.prob=1.5", "error: data.augment.prob must be in [0, 1], got 1.5"),
        ("train.amp=fp8", "error: train.amp must be one of auto, bf16, fp16, none, got 'fp8'"),
    ],
)
def test_train_set_with_a_bad_value_is_one_line_and_exit_2(override, expected, capsys, tmp_path):
    code = main(["train", "--config", str(REPO / "recipes/shared_dev/conf/forever.yaml"), "--set", f"train.out_dir={tmp_path}", "--set", override])
    assert code == 2
    assert _one_line(capsys) == expected
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_a_bad_value_in_a_yaml_file_is_one_line_and_exit_2(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"base: {REPO / 'recipes/shared_dev/conf/forever.yaml'}\ntrain:\n  ema: 1.0\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert _one_line(capsys) == "error: train.ema must be in [0, 1), got 1.0"
    vocoder = tmp_path / "vocoder.yaml"
    vocoder.write_text("generator:\n  kernel_size: 4\n")
    assert main(["train-vocoder", "--config", str(vocoder)]) == 2
    assert _one_line(capsys) == "error: generator.kernel_size must be an odd number >= 1, got 4"


def test_a_checkpoint_with_a_bad_value_is_one_line_and_exit_2(capsys, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(REPO / "checkpoints" / "default", ck, ignore=shutil.ignore_patterns("*.wav"))
    meta = json.loads((ck / "config.json").read_text())
    meta["config"]["model"]["mel_std"] = 0
    (ck / "config.json").write_text(json.dumps(meta))
    assert main(["info", str(ck)]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: ") and "model.mel_std must be > 0, got 0.0" in line, line


def test_an_unexpected_exception_is_one_line_exit_3_and_its_traceback_with_v(capsys, monkeypatch):
    import vckit.cli as cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_cmd_speakers", broken)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), broken))
    assert cli.main(["speakers"]) == 3
    assert _one_line(capsys) == "error: unexpected RuntimeError: boom (a bug in vckit; please report it; rerun with -v for the traceback)"
    assert cli.main(["-v", "speakers"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError: boom")


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["speakers"].set_defaults(func=func)
    return parser
