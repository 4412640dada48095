"""Eval latency and peak memory of the eager model on CPU, model only and end to end.

    python bench/bench_model.py [--archs tiny s l] [--batches 1 4] [--runs 10] [--quick]

For each (arch, batch): `model_only` times `model(inputs)` on tensors prepared beforehand;
`end_to_end` times JPEG file -> decode + preprocess (mrtdetr_lib/infer.py, the eval reader's
bicubic resize) -> model -> post-processed outputs as numpy. Median over `--runs` after
`--warmup` runs, at the preset's eval size, random weights (the latency does not depend on
them). Each configuration runs in a fresh child process, so `peak_mb` (max RSS) is its own.
`gmacs` counts the multiply-accumulates of the convolutions and linear layers of one forward
(the bulk of the work; attention's matrix products and the mask head's einsum are not counted):
latency against the CPU's peak says how far an optimised runtime could still go.
Prints one JSON line per measurement; never fails on speed. The issue's target on the 2-core
machine: `l` at 640, batch 1, model_only <= 2.9 s and end_to_end <= 3.6 s (PaddleDetection's
own eager code there), shown as `target_ms` / `meets_target`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

import cv2
import numpy as np

import mrtdetr_lib as mrt
from mrtdetr_lib.data import preprocess, read_image
from mrtdetr_lib.export.benchmark import interleaved_times, quartiles_ms

TARGETS_MS = {("l", 1, 640): {"model_only": 2900, "end_to_end": 3600}}


def write_images(folder: str, count: int, size=(480, 640)) -> List[str]:
    """`count` JPEGs of COCO's common size (h, w) with smooth random content."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        image = cv2.resize(small, size[::-1], interpolation=cv2.INTER_CUBIC)
        paths.append(os.path.join(folder, f"bench_{i}.jpg"))
        cv2.imwrite(paths[-1], image)
    return paths


def count_macs(model, inputs: Dict) -> float:
    """Multiply-accumulates of the Conv2D and Linear layers in one forward of `inputs`."""
    import paddle

    total = [0]

    def conv(layer, args, out):  # each output value: in/groups x kh x kw products
        total[0] += int(np.prod(out.shape)) * int(np.prod(layer.weight.shape[1:]))

    def linear(layer, args, out):  # weight [in, out]: `in` products per output value
        total[0] += int(np.prod(out.shape)) * layer.weight.shape[0]

    hooks = [layer.register_forward_post_hook(conv if isinstance(layer, paddle.nn.Conv2D)
                                              else linear)
             for layer in model.sublayers() if isinstance(layer, (paddle.nn.Conv2D,
                                                                  paddle.nn.Linear))]
    with paddle.no_grad():
        model(inputs)
    for hook in hooks:
        hook.remove()
    return float(total[0])


def measure(arch: str, batch: int, warmup: int, runs: int, threads: int) -> List[Dict]:
    """Both measurements of one (arch, batch) in this process -> JSON-ready dicts."""
    import paddle

    threads = mrt.setup(threads)
    paddle.seed(0)
    model = mrt.build_model(arch)
    model.eval()
    size = tuple(mrt.model_config(arch).eval_size)

    with tempfile.TemporaryDirectory() as folder:
        files = write_images(folder, batch)

        def end_to_end() -> Dict[str, np.ndarray]:
            arrays = [preprocess(read_image(path), size) for path in files]
            inputs = {k: paddle.to_tensor(np.concatenate([a[k] for a in arrays]))
                      for k in arrays[0]}
            with paddle.no_grad():
                return {k: v.numpy() for k, v in model(inputs).items()}

        arrays = [preprocess(read_image(path), size) for path in files]
        prepared = {k: paddle.to_tensor(np.concatenate([a[k] for a in arrays]))
                    for k in arrays[0]}

        def model_only() -> Dict[str, paddle.Tensor]:
            with paddle.no_grad():
                return model(prepared)

        times_ms = interleaved_times([model_only, end_to_end], runs, warmup)
        gmacs = round(count_macs(model, prepared) / 1e9, 2)
        results = {"model_only": times_ms[0], "end_to_end": times_ms[1]}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines = []
    for what, times in results.items():
        q25, median, q75 = quartiles_ms(times)
        line = {"what": what, "config": f"{arch} {size[0]}x{size[1]} batch {batch}",
                "backend": f"paddle {paddle.__version__} eager cpu, {threads} threads",
                "arch": arch, "batch": batch, "size": list(size), "runs": runs,
                "median_ms": round(float(median), 1), "iqr_ms": round(float(q75 - q25), 1),
                "min_ms": round(float(min(times)), 1), "peak_mb": round(peak_mb),
                "gmacs": gmacs}
        target = TARGETS_MS.get((arch, batch, size[0]), {}).get(what)
        if target is not None and size[0] == size[1]:
            line.update(target_ms=target, meets_target=line["median_ms"] <= target)
        lines.append(line)
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["tiny", "s", "l"],
                        choices=list(mrt.ARCHS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=None, help="timed runs (default 10; 3 quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs (default 2; 1 quick)")
    parser.add_argument("--threads", type=int, default=0,
                        help="paddle CPU threads (0: env MRTDETR_THREADS, else every core)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny only, batch 1, 3 runs (MRTDETR_QUICK=1 only lowers runs)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure here instead of one child process per configuration")
    args = parser.parse_args(argv)
    quick = args.quick or mrt.quick_mode()
    if args.quick:
        args.archs, args.batches = ["tiny"], [1]
    runs = args.runs or (3 if quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)

    for arch in args.archs:
        for batch in args.batches:
            if args.in_process:
                for line in measure(arch, batch, warmup, runs, args.threads):
                    print(json.dumps(line), flush=True)
                continue
            # a fresh process: its max RSS is this configuration's peak alone
            child = [sys.executable, os.path.abspath(__file__), "--in-process", "--archs", arch,
                     "--batches", str(batch), "--runs", str(runs), "--warmup", str(warmup),
                     "--threads", str(args.threads)]
            done = subprocess.run(child, stdout=subprocess.PIPE, text=True)
            sys.stdout.write(done.stdout)
            if done.returncode != 0:
                print(json.dumps({"what": "error", "config": f"{arch} batch {batch}",
                                  "returncode": done.returncode}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
