"""Branch a training checkpoint into a model that has new parts, keeping everything else it learned.

    python recipes/shared_dev/grow.py --from runs/forever/step-000003200 --out runs/cd_harm \\
        --config recipes/shared_dev/conf/cooldown.yaml --set model.f0.harmonic_prior=true

An A/B of a new model part (issue 29's harmonic prior) must start where the
other arm starts: the same weights, the same Adam moments, the same moving
average, step and data position. ``--init-from`` gives only the weights and
restarts the warm-up and the adversary. This writes a step folder under
``--out`` that ``vckit train --resume`` goes on from as if the run had always
had the new parts: every tensor the checkpoint has keeps its value and its
optimizer state (matched by name); the new ones start as the model builds them
(the harmonic prior's layers at zero, so the grown model converts exactly as
before) with fresh moments. A tensor may also grow wider (wider content
codes, ``model.content.dim`` 16 -> 32): the old values fill its leading slice,
new inputs get zero weights and new outputs their fresh init, so again the
grown model converts exactly as before. A tensor that the new model lacks, or
holds narrower, is an error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vckit.checkpoint import load_checkpoint, load_train_state, save_checkpoint, step_folder  # noqa: E402
from vckit.config_files import load_config  # noqa: E402
from vckit.models.vc import build_model  # noqa: E402
from vckit.training.loop import make_optimizer  # noqa: E402


def _param_groups(model: torch.nn.Module, cfg) -> list[list[str]]:
    """The names of ``model``'s parameters in the optimizer's groups and order (found by identity)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in make_optimizer(model, cfg).param_groups]


def widen(old: torch.Tensor, built: torch.Tensor) -> torch.Tensor:
    """``built`` (the new model's fresh tensor) with ``old`` in its leading slice. In a weight (out, in, ...), new
    inputs get zero weights, so the wider layer computes what the narrow one did; new outputs keep their fresh init."""
    out = built.detach().clone()
    if out.dim() >= 2:
        out[:, old.shape[1]:] = 0
    return _into(old, out)


def _into(old: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    out[tuple(slice(0, n) for n in old.shape)] = old
    return out


def grows(old: torch.Tensor, new: torch.Tensor) -> bool:
    """Whether ``new`` is ``old``'s shape or wider in some dimensions (never narrower, never another rank)."""
    return old.dim() == new.dim() and all(a <= b for a, b in zip(old.shape, new.shape))


def grow_optimizer(state: dict, old: list[str], new: list[str], new_groups: list[list[str]], built: dict[str, torch.Tensor]) -> dict:
    """Re-key an optimizer state dict from ``old`` parameter order to ``new``. New parameters get no state (Adam
    starts theirs); a widened one keeps its moments in the leading slice, and its new entries start with no
    momentum and the tensor's mean second moment, so its first steps are no larger than the others'."""
    by_name = {old[i]: s for i, s in state["state"].items()}
    index = {n: i for i, n in enumerate(new)}
    for n, s in by_name.items():
        if s["exp_avg"].shape != built[n].shape:
            s["exp_avg"] = _into(s["exp_avg"], torch.zeros_like(built[n]))
            s["exp_avg_sq"] = _into(s["exp_avg_sq"], torch.full_like(built[n], float(s["exp_avg_sq"].mean())))
    groups = [{**g, "params": [index[n] for n in names]} for g, names in zip(state["param_groups"], new_groups)]
    return {"state": {index[n]: s for n, s in by_name.items()}, "param_groups": groups}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="a training step folder (runs/NAME/step-N)")
    ap.add_argument("--out", required=True, help="the new run's out_dir (must hold no checkpoint yet)")
    ap.add_argument("--config", required=True, help="the new run's config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    old_cfg, sd, meta = load_checkpoint(args.src)
    cfg = load_config(args.config, args.set)
    if not cfg.model.n_speakers:  # the trainer sets it from the data; the adversary's size must stay
        cfg = replace(cfg, model=replace(cfg.model, n_speakers=old_cfg.model.n_speakers))
    folder = step_folder(args.out, int(meta["step"]))
    if folder.exists():
        print(f"{folder} exists; choose another --out", file=sys.stderr)
        return 1
    old_model, model = build_model(old_cfg, for_training=True), build_model(cfg, for_training=True)
    built = model.state_dict()
    bad = [k for k in sd if k not in built or not grows(sd[k], built[k])]
    if bad:
        print(f"{args.config} is not a growth of {args.src}: {bad[0]} ({len(bad)} in all) is missing or narrower", file=sys.stderr)
        return 1
    added = [k for k in built if k not in sd]
    widened = [k for k in sd if sd[k].shape != built[k].shape]
    model.load_state_dict({k: widen(v, built[k]) if k in widened else v for k, v in sd.items()}, strict=False)
    grown = model.state_dict()
    state = load_train_state(args.src)
    groups = _param_groups(model, cfg)
    old_names = [n for g in _param_groups(old_model, old_cfg) for n in g]
    state["optimizer"] = grow_optimizer(state["optimizer"], old_names, [n for g in groups for n in g], groups, grown)
    if "ema" in state:
        ema = state["ema"]
        for k in widened:
            ema[k] = widen(ema[k], grown[k].float())
        ema.update({k: grown[k].detach().float().clone() for k in added if grown[k].is_floating_point()})
    extra = {k: v for k, v in meta.items() if k in ("speakers", "training_cpu_hours")}
    save_checkpoint(folder, cfg, grown, step=int(meta["step"]), extra=extra, train_state=state)
    print(f"{args.src} -> {folder}: {len(added)} new tensors, {len(widened)} widened ({', '.join((added + widened)[:6])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
