"""Train the `tiny` preset from scratch on the shapes data set for a wall-clock budget.

    python bench/train_shapes.py --minutes 10 [-c CONFIG] [--eval-every 1] [--threads 2]
                                 [--procs 1] [-o key=value ...]

Evaluates the EMA weights on the validation split every `--eval-every` minutes of training (the
clock stops while evaluating) and prints one JSON line: final mask/box AP, AP50, iterations and
the curve of AP against training minutes. The issue's target: mask AP >= 0.50 within 10 minutes
on 2 CPU cores. A benchmark never fails on its numbers.

`--procs 2` trains as 2 processes of `--threads / 2` threads each (paddle.distributed.launch over
gloo; `data.batch_size` is per process, as in PaddleDetection). On 2 cores that is 1.5x more steps
a minute than one process of 2 threads: a step of `tiny` is too small for two threads to share.
Rank 0's clock decides when every rank evaluates and stops; rank 0 evaluates and reports.

Without `-c` it trains the `tiny` preset as the notebooks do. `--procs 2 -c
configs/tiny_shapes_10min.yml` is the fastest recipe measured on 2 cores (2 processes of batch 4,
lr 2e-3 held for 60% of 1750 steps then a cosine to 0, no denoising, 30 queries, 128-160 px, 512
loss points, light augmentation); its curves and figures are in the README. If the config sets
`train.max_iters`, the run ends there or at the budget, whichever comes first, and is evaluated at
its end. `bench/plot_curves.py` draws the curves of several runs.
"""

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import paddle
import paddle.distributed as dist

import mrtdetr_lib as mrt
from mrtdetr_lib.config import apply_overrides, load_config
from mrtdetr_lib.data import build_dataset
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.engine import Trainer

KEYS = ("mask_AP", "mask_AP50", "bbox_AP", "bbox_AP50")


def train_by_clock(cfg, minutes: float, eval_every: float):
    """Train for `minutes` of training time, evaluating the EMA weights every `eval_every`
    minutes (the clock stops while evaluating); returns (trainer, curve, eval seconds)."""
    evaluates = dist.get_rank() == 0  # rank 0 alone: the trainer's is_main
    eval_data = build_dataset(cfg.data, "val", cfg.model.eval_size) if evaluates else None
    trainer = Trainer(cfg, eval_data=eval_data, progress=False)
    budget, every = minutes * 60, eval_every * 60
    curve, next_eval, eval_seconds, loss = [], every, 0.0, float("nan")

    def evaluate(trained: float) -> None:
        """Add a curve point for the EMA weights; their evaluation stops the clock."""
        nonlocal eval_seconds
        if not trainer.is_main:  # the others wait for it in the next step's gradient all-reduce
            return
        start = time.perf_counter()
        metrics = trainer.evaluate()
        eval_seconds += time.perf_counter() - start
        curve.append({"minutes": round(trained / 60, 2), "step": trainer.global_step,
                      "loss": round(loss, 3), **{k: round(metrics[k], 4) for k in KEYS}})
        print(json.dumps(curve[-1]), file=sys.stderr, flush=True)

    tic = time.perf_counter()
    steps = trainer.run()
    for record in steps:
        if record["kind"] != "train":
            continue
        loss = record["loss"]
        trained = time.perf_counter() - tic - eval_seconds
        due_eval, due_stop = trained >= min(next_eval, budget), trained >= budget
        if trainer.world > 1:  # every rank must leave the loop at the same step
            due_eval, due_stop = rank0_decides(due_eval, due_stop)
        if due_eval:
            evaluate(trained)
            next_eval += every
        if due_stop:
            break
    steps.close()  # saves the last checkpoint
    if not curve or curve[-1]["step"] != trainer.global_step:  # the schedule ended first
        evaluate(time.perf_counter() - tic - eval_seconds)
    return trainer, curve, eval_seconds


def rank0_decides(*flags: bool) -> list:
    """Rank 0's flags, on every rank (a broadcast of a few ints each step: well under 1 ms)."""
    shared = paddle.to_tensor([int(flag) for flag in flags])
    dist.broadcast(shared, src=0)
    return [bool(flag) for flag in shared.numpy()]


def launch(procs: int, argv: list) -> int:
    """Run this script as `procs` ranks under paddle.distributed.launch; print rank 0's line."""
    with tempfile.TemporaryDirectory(prefix="train_shapes_launch_") as tmp:
        result = os.path.join(tmp, "result.json")
        env = {**os.environ, "PADDLE_DISTRI_BACKEND": "gloo", "MRTDETR_BENCH_RESULT": result}
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                   str(procs), "--log_dir", os.path.join(tmp, "log"), __file__, *argv]
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            for text in proc.stdout:  # the launcher echoes rank 0: our progress, on stderr
                sys.stderr.write(text)
        code = proc.returncode
        if code != 0 or not os.path.exists(result):
            for log in sorted(glob.glob(os.path.join(tmp, "log", "workerlog.*"))):
                with open(log) as f:
                    print(f"--- {os.path.basename(log)}\n" + f.read()[-3000:], file=sys.stderr)
            print(f"train_shapes: {procs} processes failed (exit code {code})", file=sys.stderr)
            return code or 1
        with open(result) as f:
            print(f.read().strip())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    parser.add_argument("-c", "--config", default=None,
                        help="YAML config (default: the tiny preset), "
                             "e.g. configs/tiny_shapes_10min.yml")
    parser.add_argument("--eval-every", type=float, default=1.0, help="minutes between evals")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads for paddle, shared by the processes")
    parser.add_argument("--procs", type=int, default=1,
                        help="training processes (data parallel over gloo); batch_size is each's")
    parser.add_argument("--data", default="dataset/shapes", help="shapes data set folder")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--output-dir", default=None, help="checkpoints and log (default: tmp)")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[],
                        help="config overrides, e.g. -o base_lr=1e-3 model.num_queries=50")
    args = parser.parse_args(argv)
    if args.procs < 1 or args.threads < args.procs:
        parser.error(f"--procs must be at least 1 and at most --threads ({args.threads}), "
                     f"got {args.procs}")

    if "PADDLE_TRAINER_ID" not in os.environ:  # not a rank that launch() started
        make_shapes(args.data, args.num_train, args.num_val, progress=False)
        args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="train_shapes_")
        if args.procs > 1:  # the ranks share the data set and the output folder made here
            argv = sys.argv[1:] if argv is None else list(argv)
            return launch(args.procs, argv + ["--output-dir", args.output_dir])
    mrt.setup(max(1, args.threads // args.procs))
    cfg = load_config(args.config or "tiny")
    cfg.data.dataset_dir = args.data
    cfg.train.output_dir = args.output_dir
    # the clock decides (or the config's `max_iters`, which a cosine schedule decays over)
    cfg.train.epochs, cfg.train.eval = 10**6, False
    cfg = apply_overrides(cfg, args.opt)

    with contextlib.redirect_stdout(sys.stderr):  # the trainer's text log; stdout is the JSON
        trainer, curve, eval_seconds = train_by_clock(cfg, args.minutes, args.eval_every)
    if not trainer.is_main:
        return 0
    final = curve[-1]
    line = json.dumps({"what": "train_shapes", "config": args.config or "tiny",
                       "threads": args.threads, "procs": args.procs, "seed": cfg.train.seed,
                       "minutes": args.minutes, "iterations": trainer.global_step,
                       # an epoch is len(sampler) steps of every rank
                       "epochs": round(trainer.global_step / len(trainer.sampler), 2),
                       **{k: final[k] for k in KEYS},
                       "best_mask_AP": max(point["mask_AP"] for point in curve),
                       "eval_minutes": round(eval_seconds / 60, 2), "curve": curve,
                       "overrides": args.opt, "output_dir": cfg.train.output_dir,
                       "target_mask_AP": 0.5})
    result = os.environ.get("MRTDETR_BENCH_RESULT")  # set by launch(): stdout is the launcher's
    if result:
        with open(result, "w") as f:
            f.write(line + "\n")
    else:
        print(line)
    return 0

if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.exit(main())
