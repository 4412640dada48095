"""Where a training step's time goes: data, backbone, encoder, decoder, matcher, each loss
term, backward, optimizer and EMA, measured on the project's own Trainer objects.

    python bench/profile_step.py [-c configs/tiny_shapes_10min.yml] [--steps 30] [--warmup 5]
                                 [--threads 2] [--markdown] [--compare REV [--loss-only]]
                                 [-o key=value ...]

Paddle runs synchronously on the CPU, so wall-clock timers around each stage (forward hooks on
the model's parts, wrappers on the matcher and the criterion's terms) add up to the step.
Prints one JSON line per stage (median and mean ms per step, share of the step), or with
`--markdown` the table the README shows. Time it on a quiet machine.

`--compare REV` times the criterion (loss/ package) of git revision REV against the working
tree's instead: both in this process, alternating step by step over the same batches and the
same random numbers (the model's forward + loss, and the backward; no optimizer step), so a
busy machine slows both alike. Prints each one's median ms, the ratio, and how far their
losses differ. With `--loss-only` the model's forward runs once per batch untimed and only the
criteria (forward and their backward down to the model's outputs) are timed.
"""

import argparse
import collections
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import paddle

import mrtdetr_lib as mrt
from mrtdetr_lib.config import apply_overrides, load_config
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.engine import Trainer

# the criterion's per-term methods (each called once for all the prediction sets)
TERMS = {"_class_loss": "loss: class (varifocal)", "_box_losses": "loss: bbox + giou",
         "_mask_losses": "loss: mask + dice (point sampling)"}


class Clock:
    """Accumulates seconds per stage within a step; `lap()` closes the step."""

    def __init__(self):
        self.current: Dict[str, float] = collections.defaultdict(float)
        self.steps: List[Dict[str, float]] = []

    def add(self, stage: str, seconds: float) -> None:
        self.current[stage] += seconds

    def wrap(self, owner: object, name: str, stage: str) -> None:
        """Replace `owner.name` by a timed call of itself."""
        inner: Callable = getattr(owner, name)

        def timed(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - tic)
        setattr(owner, name, timed)

    def hook(self, layer, stage: str) -> None:
        """Time a sublayer's forward with a pre and a post hook."""
        start = {}
        layer.register_forward_pre_hook(lambda *_: start.update(t=time.perf_counter()))
        layer.register_forward_post_hook(
            lambda *_: self.add(stage, time.perf_counter() - start["t"]))

    def lap(self) -> None:
        self.steps.append(dict(self.current))
        self.current.clear()


def profile(trainer: Trainer, steps: int, warmup: int) -> List[Dict[str, float]]:
    """Run warmup + steps training steps stage by stage; the per-step seconds of each stage."""
    clock = Clock()
    model, criterion = trainer.model, trainer.criterion
    clock.hook(model.backbone, "backbone")
    clock.hook(model.neck, "encoder (hybrid encoder + mask features)")
    clock.hook(model.transformer, "decoder (query selection, denoising, layers)")
    clock.wrap(criterion.matcher, "match_sets", "matcher (costs + Hungarian)")
    for method, stage in TERMS.items():
        clock.wrap(criterion, method, stage)
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.loader)
    model.train()
    for _ in range(warmup + steps):
        tic = time.perf_counter()
        batch = next(batches)
        clock.add("data (loader)", time.perf_counter() - tic)
        tic = time.perf_counter()
        losses = criterion(model(batch), batch)
        clock.add("forward + loss", time.perf_counter() - tic)
        tic = time.perf_counter()
        losses["loss"].backward()
        clock.add("backward", time.perf_counter() - tic)
        tic = time.perf_counter()
        trainer.optimizer.step()
        trainer.optimizer.clear_grad()
        trainer.scheduler.step()
        clock.add("optimizer (AdamW + clip)", time.perf_counter() - tic)
        tic = time.perf_counter()
        if trainer.ema is not None:
            trainer.ema.update(model)
        clock.add("EMA", time.perf_counter() - tic)
        clock.lap()
    return clock.steps[warmup:]


def criterion_at(rev: str, trainer: Trainer) -> Callable:
    """The trainer's criterion as built by the `mrtdetr_lib/loss` package of git revision `rev`
    (imported as `mrtdetr_lib.loss_at_rev` from a temporary copy)."""
    folder = Path(tempfile.mkdtemp(prefix="loss_at_rev_"))
    root = Path(__file__).resolve().parents[1]
    for name in ("__init__.py", "criterion.py", "matcher.py"):
        source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:mrtdetr_lib/loss/{name}"],
                                capture_output=True, text=True, check=True).stdout
        (folder / name).write_text(source)
    spec = importlib.util.spec_from_file_location("mrtdetr_lib.loss_at_rev",
                                                  folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cfg = trainer.cfg
    return module.build_criterion(cfg.loss, num_classes=cfg.model.num_classes)


def leaves(outputs: Dict[str, object]) -> Dict[str, object]:
    """The model's outputs as new leaf tensors that take gradients (the backward stops there)."""
    result = {}
    for key, value in outputs.items():
        if isinstance(value, paddle.Tensor):
            value = value.detach()
            value.stop_gradient = False
        result[key] = value
    return result


def compare(trainer: Trainer, old: Callable, steps: int, warmup: int,
            loss_only: bool = False) -> Dict[str, object]:
    """Old and new criterion alternating (ABBA...) on each batch with the same seed: median
    ms of forward + loss and of backward for each, and their largest relative loss gap.
    `loss_only`: the model's forward runs once per batch outside the clock, and only the
    criterion and its own backward (down to the model's outputs) are timed."""
    model, criteria = trainer.model, {"old": old, "new": trainer.criterion}
    times: Dict[str, List[float]] = {f"{k} {part}": [] for k in criteria
                                     for part in ("forward + loss", "backward")}
    gap = 0.0
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.loader)
    model.train()
    for step in range(warmup + steps):
        batch = next(batches)
        order = ["old", "new"] if step % 2 == 0 else ["new", "old"]
        values, outputs = {}, None
        if loss_only:
            with paddle.no_grad():
                outputs = model(batch)
        for name in order:
            paddle.seed(step)
            inputs = leaves(outputs) if loss_only else None
            tic = time.perf_counter()
            losses = criteria[name](inputs if loss_only else model(batch), batch)
            middle = time.perf_counter()
            losses["loss"].backward()
            toc = time.perf_counter()
            trainer.optimizer.clear_grad()
            values[name] = {k: float(v) for k, v in losses.items()}
            if step >= warmup:
                times[f"{name} forward + loss"].append(middle - tic)
                times[f"{name} backward"].append(toc - middle)
        gap = max(gap, *(abs(values["new"][k] - v) / max(abs(v), 1e-12)
                         for k, v in values["old"].items()))
    result = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    for name in criteria:
        result[f"{name} step"] = round(1000 * statistics.median(
            a + b for a, b in zip(times[f"{name} forward + loss"], times[f"{name} backward"])),
            1)
    result["new / old step"] = round(result["new step"] / result["old step"], 3)
    result["largest relative loss difference"] = float(f"{gap:.3g}")
    result["load average (1 min) at the end"] = os.getloadavg()[0]
    return result


def summarise(steps: List[Dict[str, float]]) -> List[Dict[str, object]]:
    """Rows per stage: median / mean ms per step and share of the mean step."""
    stages = list(steps[0])
    inside = ["backbone", "encoder (hybrid encoder + mask features)",
              "decoder (query selection, denoising, layers)", "matcher (costs + Hungarian)",
              *TERMS.values()]
    for step in steps:  # what the forward + loss spends outside the timed parts
        step["loss: the rest (gathering, aux/dn bookkeeping)"] = step.pop("forward + loss") - sum(
            step.get(k, 0.0) for k in inside)
    stages = [s for s in stages if s != "forward + loss"]
    stages.insert(stages.index("backward"), "loss: the rest (gathering, aux/dn bookkeeping)")
    total = statistics.mean(sum(step.values()) for step in steps)
    rows = [{"stage": s, "median_ms": round(1000 * statistics.median(x[s] for x in steps), 1),
             "mean_ms": round(1000 * statistics.mean(x[s] for x in steps), 1),
             "share": round(statistics.mean(x[s] for x in steps) / total, 3)} for s in stages]
    rows.append({"stage": "step", "median_ms": round(1000 * statistics.median(
        sum(x.values()) for x in steps), 1), "mean_ms": round(1000 * total, 1), "share": 1.0})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/tiny_shapes_10min.yml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="dataset/shapes")
    parser.add_argument("--markdown", action="store_true", help="a table instead of JSON")
    parser.add_argument("--compare", metavar="REV", help="A/B the criterion of git revision REV")
    parser.add_argument("--loss-only", action="store_true",
                        help="with --compare: time the criterion alone (forward + its backward)")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[])
    args = parser.parse_args()
    threads = mrt.setup(args.threads)
    make_shapes(args.data, progress=False)
    cfg = load_config(args.config)
    cfg.data.dataset_dir = args.data
    cfg.train.output_dir, cfg.train.eval = tempfile.mkdtemp(prefix="profile_step_"), False
    cfg = apply_overrides(cfg, args.opt)
    trainer = Trainer(cfg, progress=False)
    if args.compare:
        result = compare(trainer, criterion_at(args.compare, trainer), args.steps, args.warmup,
                         args.loss_only)
        print(json.dumps({"what": "profile_step --compare", "config": args.config,
                          "timed": "criterion" if args.loss_only else "model + criterion",
                          "rev": args.compare, "threads": threads, "steps": args.steps,
                          **result, "overrides": args.opt}))
        return 0
    rows = summarise(profile(trainer, args.steps, args.warmup))
    if args.markdown:
        print("| stage | median ms | share |\n|---|---|---|")
        for row in rows:
            print(f"| {row['stage']} | {row['median_ms']} | {100 * row['share']:.0f} % |")
    else:
        for row in rows:
            print(json.dumps({"what": "profile_step", "config": args.config, "threads": threads,
                              "steps": args.steps, **row, "overrides": args.opt}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
