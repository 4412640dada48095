"""Sliced inference on small objects: the course checkpoint on large images of small shapes.

    python bench/bench_slicing.py [--images 5] [--scale 4] [--overlap 0.25]

Each image is `scale` times the model's eval size (224 px: 896 px at scale 4) with shapes of the
size the checkpoint was trained on (11-47 px radius), so the whole image, resized to the eval
size, shows them `scale` times smaller, and tiles of the eval size show them as trained. Prints
one JSON line per method (whole image, sliced nms, sliced nmm): shapes found (mask IoU > 0.5 with
one prediction), extra copies (further predictions with IoU > 0.3 on a shape) and median ms per
image. Never fails on speed.
"""

import argparse
import json
import sys
import time
from typing import List, Optional

import numpy as np

from mrtdetr_lib.course import load_course_model
from mrtdetr_lib.data import segmentation_to_mask
from mrtdetr_lib.data.shapes import RADIUS_RANGE, render_image
from mrtdetr_lib.infer import Predictor


def score(masks: np.ndarray, truth: List[np.ndarray]) -> dict:
    """Shapes found (a prediction with mask IoU > 0.5) and extra copies (IoU > 0.3, beyond one)."""
    found = copies = 0
    for mask in truth:
        ious = [(m & mask).sum() / (m | mask).sum() for m in masks]
        found += int(any(iou > 0.5 for iou in ious))
        copies += max(0, int(sum(iou > 0.3 for iou in ious)) - 1)
    return {"found": found, "copies": copies}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--scale", type=int, default=4, help="image side / the model's eval size")
    parser.add_argument("--overlap", type=float, default=0.25, help="tile overlap ratio")
    args = parser.parse_args(argv)
    model, cfg = load_course_model()
    predictor = Predictor(model, threshold=0.5, image_size=cfg.model.eval_size)
    tile = tuple(cfg.model.eval_size)
    size = args.scale * tile[0]
    radius_range = tuple(r / args.scale for r in RADIUS_RANGE)  # trained sizes in pixels
    methods = {"whole_image": predictor,
               "sliced_nms": lambda im: predictor.predict_sliced(im, tile, [args.overlap] * 2),
               "sliced_nmm": lambda im: predictor.predict_sliced(im, tile, [args.overlap] * 2,
                                                                 "nmm")}
    totals = {name: {"found": 0, "copies": 0, "ms": []} for name in methods}
    num_shapes = 0
    for i in range(args.images):
        image, objects = render_image(np.random.default_rng([5, i]), size, radius_range)
        truth = [segmentation_to_mask(o["segmentation"], size, size).astype(bool)
                 for o in objects]
        num_shapes += len(truth)
        for name, predict in methods.items():
            start = time.perf_counter()
            masks = predict(image)["masks"]
            totals[name]["ms"].append(1000 * (time.perf_counter() - start))
            for key, value in score(masks, truth).items():
                totals[name][key] += value
    for name, total in totals.items():
        print(json.dumps({"what": "slicing", "method": name, "images": args.images,
                          "image_size": size, "tile": list(tile), "overlap": args.overlap,
                          "shapes": num_shapes, "found": total["found"],
                          "copies": total["copies"],
                          "median_ms": round(float(np.median(total["ms"])), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
