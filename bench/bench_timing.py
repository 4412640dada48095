"""Why one model's latency read 36 to 216 ms across the chapters: what else shares the process.

The course model (224 px) is timed by the one protocol (`export.benchmark.interleaved_times`)
in fresh processes that differ only in what else is timed beside it:

- `eager` alone, then interleaved with the same eager model at batch 2 (chapter 06 times both
  batch sizes), with Paddle Inference, with ONNX Runtime and OpenVINO (chapter 06's backends);
- `ort_fp32` and `openvino_fp32` alone, and side by side;
- each combination `--repeats` times, each time in a new process (the spread between processes
  is not the spread within one);
- with `--kmp_blocktime default 0`, everything again with `KMP_BLOCKTIME=0`, which makes the
  Intel OpenMP threads of paddle sleep as soon as a parallel region ends instead of spinning
  for 200 ms.

One JSON line per (process, predictor): median and quartiles in ms. On a quiet machine:

    .venv/bin/python bench/bench_timing.py --runs 20 --repeats 3 > bench/results/timing.jsonl

bench/results/timing_context_2026-12-03_run1.jsonl is one process per combination under
`--kmp_blocktime default 0` (before `--repeats` and the eager + ONNX Runtime pair existed);
..._run2.jsonl is `--repeats 3`, twenty minutes later. What they show (medians, ms): ONNX
Runtime alone 5.6 in run 1 and 9.0-10.2 in run 2, nothing else running in the VM: the spread
between runs is larger than any effect of what shares the process; eager alone 50 (run 1),
59-77 (run 2); KMP_BLOCKTIME=0 made eager slower (72), not the others faster.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from typing import List

COMBINATIONS = (
    ["eager"], ["eager", "eager_b2"], ["eager", "paddle_inference"], ["eager", "ort_fp32"],
    ["eager", "ort_fp32", "openvino_fp32"], ["ort_fp32"], ["openvino_fp32"],
    ["ort_fp32", "openvino_fp32"],
)


def child(names: List[str], runs: int, export_dir: str, repeat: int) -> None:
    """Time the named predictors interleaved in this process; print one JSON line each."""
    from bench_deploy import random_inputs  # bench/ is on the path of a script run from it

    import mrtdetr_lib.course  # noqa: F401  (sets the process up: quiet paddle, every core)
    from mrtdetr_lib.course import course_checkpoint, load_course_model
    from mrtdetr_lib.course.deploy import build_backends
    from mrtdetr_lib.export.benchmark import interleaved_times, latency_stats

    model, cfg = load_course_model(course_checkpoint())
    size = tuple(cfg.model.eval_size)
    feeds = {batch: random_inputs(batch, size) for batch in (1, 2)}
    backends = sorted({n.removesuffix("_b2") for n in names})
    predictors, _ = build_backends(model, export_dir, "tiny", batch=1, size=size,
                                   backends=backends)
    calls = [lambda n=n: predictors[n.removesuffix("_b2")](feeds[2 if n.endswith("_b2") else 1])
             for n in names]
    times = interleaved_times(calls, runs, 3)
    for name, row in zip(names, times):
        stats = {k: round(v, 1) for k, v in latency_stats(row).items()}
        print(json.dumps({"what": "timing_context", "predictor": name, "beside": names,
                          "KMP_BLOCKTIME": os.environ.get("KMP_BLOCKTIME", "default"),
                          "process": repeat, "runs": runs, **stats}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="processes per combination")
    parser.add_argument("--kmp_blocktime", nargs="+", default=["default"],
                        help="KMP_BLOCKTIME values to run under ('default': unset)")
    parser.add_argument("--child", help="comma-separated predictors (internal)")
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as export_dir:
        if args.child:
            child(args.child.split(","), args.runs, export_dir, args.repeat)
            return
        for blocktime in args.kmp_blocktime:
            env = {k: v for k, v in os.environ.items() if k != "KMP_BLOCKTIME"}
            if blocktime != "default":
                env["KMP_BLOCKTIME"] = blocktime
            for names, repeat in itertools.product(COMBINATIONS, range(args.repeats)):
                out = subprocess.run([sys.executable, __file__, "--runs", str(args.runs),
                                      "--child", ",".join(names), "--repeat", str(repeat)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                for line in out.splitlines():  # the converters print to stdout too
                    if line.startswith("{"):
                        print(line, flush=True)


if __name__ == "__main__":
    main()
