"""AP of every CPU backend against eager on shapes images the course checkpoint never saw.

    python bench/bench_backend_ap.py [--seed 7] [--val 100] [--calibration 32]
                                     [--backends eager ort_fp32 ort_int8 ...] [--markdown]

Writes a fresh shapes validation split of `--val` images drawn with `--seed` (the checkpoint
was trained on seed 0), exports the checkpoint once (`course.deploy.build_backends`; int8
calibrated on the first `--calibration` training images of seed 0, as chapter 06 does) and
scores every backend with `course.deploy.compare_backends`: box and mask AP, and each one's
difference to eager with a 95% paired bootstrap interval over the images. One JSON line per
backend (AP in points), plus `within` (|difference| <= `--limit` points on both, issue 24's
0.5). bf16 backends are left out where the CPU has no bf16. A benchmark never fails on its
numbers.
"""

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import mrtdetr_lib.course  # noqa: F401  (first: sets the process up)
from mrtdetr_lib.course import course_checkpoint, load_course_model
from mrtdetr_lib.course.deploy import BACKENDS, build_backends, compare_backends, markdown_backends
from mrtdetr_lib.data import build_loader
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.export.benchmark import machine, versions
from mrtdetr_lib.export.openvino import bf16_available


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="shapes seed of the scored images")
    parser.add_argument("--val", type=int, default=100, help="validation images scored")
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--limit", type=float, default=0.5, help="AP points (issue 24: 0.5)")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--markdown", action="store_true", help="also print the table")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends if "bf16" not in b or bf16_available()]
    with tempfile.TemporaryDirectory() as tmp:
        scored, train = Path(tmp) / "scored", Path(tmp) / "train"
        make_shapes(str(scored), num_train=1, num_val=args.val, seed=args.seed, progress=False)
        make_shapes(str(train), num_train=args.calibration, num_val=1, seed=0, progress=False)
        with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON lines only
            model, cfg = load_course_model(course_checkpoint())
        cfg.data.dataset_dir = str(scored)
        predictors, _ = build_backends(
            model, Path(tmp) / "exports", "course", size=tuple(cfg.model.eval_size),
            calibration_images=sorted((train / "train").glob("*.jpg")), backends=backends)
        rows = compare_backends(predictors, build_loader(cfg, "val", num_workers=0),
                                samples=args.samples)
    common = {"what": "backend_ap", "seed": args.seed, "val_images": args.val,
              "calibration_images": args.calibration, "machine": machine(),
              "versions": versions()}
    for r in rows:
        line = {"backend": r["backend"], **{k: round(100 * r[k], 2) for k in (
            "box_AP", "mask_AP", "box_difference", "box_low", "box_high", "mask_difference",
            "mask_low", "mask_high")}}
        line["within"] = max(abs(line["box_difference"]), abs(line["mask_difference"])) \
            <= args.limit
        print(json.dumps({**line, **common}), flush=True)
    if args.markdown:
        print(markdown_backends(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
