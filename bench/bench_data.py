"""Data pipeline throughput: images/s of the training and evaluation readers at 640 px.

    python bench/bench_data.py [--images 64] [--workers 0 2]

Runs the full Mask RT-DETR TrainReader (Decode, Poly2Mask, RandomDistort, RandomExpand,
RandomCrop, RandomFlip, BatchRandomResize over 480..800, NormalizeImage, NormalizeBox,
BboxXYXY2XYWH, Permute; batch 4, the `l` preset) and the EvalReader (bicubic resize to 640) on a
generated set of 640x640 shapes images, through the library's DataLoader. Prints one JSON line
per measurement; never fails on speed.
"""

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np

import mrtdetr_lib as mrt
from mrtdetr_lib.data import build_loader
from mrtdetr_lib.data.shapes import make_shapes


def measure(cfg: mrt.Config, split: str, workers: int, epochs: int) -> dict:
    """Iterate the loader `epochs` times after one warm-up batch; images/s and ms per batch."""
    loader = build_loader(cfg, split, num_workers=workers)
    batch_times, images = [], 0
    iterator = iter(loader)
    next(iterator)  # workers start and fill their queue before the clock starts
    start = tick = time.perf_counter()
    for epoch in range(epochs):
        for batch in iterator:
            now = time.perf_counter()
            batch_times.append(now - tick)
            images += batch["image"].shape[0]
            tick = now
        iterator = iter(loader) if epoch + 1 < epochs else None
    seconds = time.perf_counter() - start
    return {"images": images, "images_per_s": round(images / seconds, 2),
            "median_ms": round(1000 * float(np.median(batch_times)), 1)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = mrt.quick_mode()
    parser.add_argument("--images", type=int, default=16 if quick else 64,
                        help="training images generated (640x640)")
    parser.add_argument("--epochs", type=int, default=1 if quick else 2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        make_shapes(root, num_train=args.images, num_val=max(args.images // 4, 4),
                    image_size=640, progress=False)
        cfg = mrt.get_config("l")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, dataset_dir=root, train_image_dir="train",
            train_anno_path="instances_train.json", val_image_dir="val",
            val_anno_path="instances_val.json"))
        for split, what in (("train", "data_train_reader"), ("val", "data_eval_reader")):
            for workers in args.workers:
                result = measure(cfg, split, workers, args.epochs)
                batch = cfg.data.batch_size if split == "train" else cfg.data.eval_batch_size
                peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(json.dumps({
                    "what": what, "config": f"l preset reader, 640px shapes, batch {batch}",
                    "backend": f"cpu ({os.cpu_count()} cores)", "workers": workers, **result,
                    "peak_mb": round(peak_mb)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
