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
before) with fresh moments. Only additions are allowed: a tensor that the new
model lacks, or with another shape, is an error.
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


def _param_names(model: torch.nn.Module, cfg) -> list[str]:
    """Parameter names in the optimizer's order (its groups concatenated), found by identity."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in make_optimizer(model, cfg).param_groups for p in g["params"]]


def grow_optimizer(state: dict, old: list[str], new: list[str], new_groups: list[list[str]]) -> dict:
    """Re-key an optimizer state dict from ``old`` parameter order to ``new``; new parameters get no state."""
    by_name = {old[i]: s for i, s in state["state"].items()}
    index = {n: i for i, n in enumerate(new)}
    groups = []
    for g, names in zip(state["param_groups"], new_groups):
        groups.append({**g, "params": [index[n] for n in names]})
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
    own = model.state_dict()
    bad = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
    if bad:
        print(f"{args.config} is not a growth of {args.src}: {bad[0]} ({len(bad)} in all) is missing or reshaped", file=sys.stderr)
        return 1
    model.load_state_dict(sd, strict=False)
    added = [k for k in own if k not in sd]
    state = load_train_state(args.src)
    old_names = _param_names(old_model, old_cfg)
    opt = make_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    state["optimizer"] = grow_optimizer(state["optimizer"], old_names, [n for g in groups for n in g], groups)
    if "ema" in state:
        grown = model.state_dict()
        state["ema"].update({k: grown[k].detach().float().clone() for k in added if grown[k].is_floating_point()})
    extra = {k: v for k, v in meta.items() if k in ("speakers", "training_cpu_hours")}
    save_checkpoint(folder, cfg, model.state_dict(), step=int(meta["step"]), extra=extra, train_state=state)
    print(f"{args.src} -> {folder}: {len(added)} new tensors ({', '.join(added[:4])}{', ...' if len(added) > 4 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
