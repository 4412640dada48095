"""Write a smaller COCO data set: N images that show chosen categories.

    python data_scripts/make_subset.py ANNOTATIONS.json OUT.json --num 200 \
        [--categories person,dog] [--seed 0] [--images IMAGE_DIR --copy-to DIR | --link-to DIR]

Keeps the images that contain at least one object of the chosen categories (all categories by
default), the first N by image id or N random ones with --seed, with only those categories'
annotations; category ids are kept (the data set maps them to labels 0..K-1). With --copy-to or
--link-to the chosen images are copied or symlinked next to the new json.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def make_subset(data: Dict[str, Any], num_images: int,
                categories: Optional[Sequence[str]] = None,
                seed: Optional[int] = None) -> Dict[str, Any]:
    """The subset of a COCO dict: images showing `categories` (names or ids), at most N."""
    cats = data["categories"]
    if categories:
        wanted = {str(c) for c in categories}
        cats = [c for c in cats if c["name"] in wanted or str(c["id"]) in wanted]
        unknown = wanted - {c["name"] for c in cats} - {str(c["id"]) for c in cats}
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; the data set has "
                             f"{[c['name'] for c in data['categories']]}")
    cat_ids = {c["id"] for c in cats}
    anns = [a for a in data["annotations"] if a["category_id"] in cat_ids]
    candidates = sorted({a["image_id"] for a in anns})
    if seed is not None:
        candidates = list(np.random.default_rng(seed).permutation(candidates))
    chosen = set(candidates[:num_images])
    rest = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return {**rest, "images": [im for im in data["images"] if im["id"] in chosen],
            "annotations": [a for a in anns if a["image_id"] in chosen], "categories": cats}


def place_images(images: List[Dict[str, Any]], src_dir: str, dst_dir: str, link: bool) -> None:
    """Copy (or symlink) each image's file from src_dir to dst_dir; existing files are kept."""
    os.makedirs(dst_dir, exist_ok=True)
    for im in images:
        src = os.path.abspath(os.path.join(src_dir, im["file_name"]))
        dst = os.path.join(dst_dir, im["file_name"])
        if not os.path.isfile(src):
            raise FileNotFoundError(f"image {im['id']} not found: {src}")
        if os.path.lexists(dst):
            continue
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        if link:
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", help="input COCO json")
    parser.add_argument("out", help="output COCO json")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--categories", default="", help="comma-separated names or ids")
    parser.add_argument("--seed", type=int, default=None, help="random images (default: first)")
    parser.add_argument("--images", help="folder of the input images (for --copy-to/--link-to)")
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--copy-to", help="copy the chosen images into this folder")
    place.add_argument("--link-to", help="symlink the chosen images into this folder")
    args = parser.parse_args(argv)
    if (args.copy_to or args.link_to) and not args.images:
        parser.error("--copy-to/--link-to need --images (the input image folder)")
    with open(args.annotations) as f:
        data = json.load(f)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    try:
        subset = make_subset(data, args.num, categories, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(subset, f)
    if args.copy_to or args.link_to:
        place_images(subset["images"], args.images, args.copy_to or args.link_to,
                     link=bool(args.link_to))
    print(f"wrote {args.out}: {len(subset['images'])} images, {len(subset['annotations'])} "
          f"annotations, {len(subset['categories'])} categories"
          + (f" (only {len(subset['images'])} images show them)"
             if len(subset["images"]) < args.num else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
