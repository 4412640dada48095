"""Where a training step's time goes: data, backbone, encoder, decoder, matcher, each loss
term, backward, optimizer and EMA, measured on the project's own Trainer objects.

    python bench/profile_step.py [-c configs/tiny_shapes_10min.yml] [--steps 30] [--warmup 5]
                                 [--threads 2] [--markdown] [-o key=value ...]

Paddle runs synchronously on the CPU, so wall-clock timers around each stage (forward hooks on
the model's parts, wrappers on the matcher and the criterion's terms) add up to the step.
Prints one JSON line per stage (median and mean ms per step, share of the step), or with
`--markdown` the table the README shows. Time it on a quiet machine.
"""

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import mrtdetr_lib as mrt
from mrtdetr_lib.config import apply_overrides, load_config
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.engine import Trainer

# the criterion's per-term methods (each called once per prediction set)
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
    clock.wrap(criterion.matcher, "forward", "matcher (costs + Hungarian)")
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
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[])
    args = parser.parse_args()
    threads = mrt.setup(args.threads)
    make_shapes(args.data, progress=False)
    cfg = load_config(args.config)
    cfg.data.dataset_dir = args.data
    cfg.train.output_dir, cfg.train.eval = tempfile.mkdtemp(prefix="profile_step_"), False
    cfg = apply_overrides(cfg, args.opt)
    trainer = Trainer(cfg, progress=False)
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
