"""A synthetic COCO instance-segmentation data set: four shapes on textured backgrounds.

The course's CPU-sized task (the `tiny` preset has 4 classes). It is written as a real COCO data
set, JPEG images plus `instances_{train,val}.json`, so everything downstream is the COCO path.
Shapes overlap: an occluded shape is annotated with its visible part, stored as RLE; whole shapes
are polygons (a few uncompressed RLE), so every segmentation format of COCO occurs.
Deterministic from a seed: image i of a split depends only on (seed, split, i).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..config import quick_mode
from ..files import atomic_write
from .coco import mask_to_rle

CLASSES = ("circle", "square", "triangle", "star")
VERSION = 1  # bump when the generator changes, so existing data sets are rebuilt
RADIUS_RANGE = (0.05, 0.21)  # circumradius of a shape, as a fraction of the image side


def shape_polygon(kind: int, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """[P,2] outline of shape `kind` (index into CLASSES) with circumradius `radius`."""
    corners, radii = [(48, [1.0]), (4, [1.0]), (3, [1.0]), (10, [1.0, 0.45])][kind]
    t = angle + 2 * np.pi * np.arange(corners) / corners
    r = radius * np.resize(radii, corners)
    return center + np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random two-colour gradient plus blotchy low-frequency texture and grain, float32 RGB."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    t = np.clip((np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)) + 0.5, 0, 1)[..., None]
    blotches = cv2.resize(rng.normal(0, 25, (6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    return c0 + t * (c1 - c0) + blotches + rng.normal(0, 6, (size, size, 3))


def _uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """COCO's uncompressed RLE: run lengths of 0s and 1s, column-major, starting with 0s."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _place_shapes(rng: np.random.Generator, size: int, radius_range: Tuple[float, float]
                  ) -> List[Tuple[int, list, np.ndarray]]:
    """1-6 shapes, bottom to top: (class, polygon, visible mask); every shape stays >= half
    visible, and the polygon is None for an occluded one (its visible part is no polygon)."""
    shapes, visible = [], []
    wanted = int(rng.integers(1, 7))
    for _ in range(10 * wanted):
        if len(shapes) == wanted:
            break
        kind, radius = int(rng.integers(len(CLASSES))), rng.uniform(*radius_range) * size
        center = rng.uniform(radius, size - radius, 2)
        polygon = np.round(shape_polygon(kind, center, radius, rng.uniform(0, 2 * np.pi)), 2)
        polygon = polygon.ravel().tolist()
        mask = mask_util.decode(mask_util.frPyObjects([polygon], size, size))[..., 0]
        covered = [v & (1 - mask) for v in visible]
        if any(c.sum() < max(0.5 * s[2].sum(), 150) for c, s in zip(covered, shapes)):
            continue  # it would hide too much of an earlier shape: try another place
        shapes.append((kind, polygon, mask))
        visible = covered + [mask]
    return [(kind, polygon if (vis == mask).all() else None, vis)
            for (kind, polygon, mask), vis in zip(shapes, visible)]


def _colour(rng: np.random.Generator, avoid: List[np.ndarray]) -> np.ndarray:
    """A random RGB colour far from the `avoid` colours (the background, the other shapes)."""
    for _ in range(30):
        colour = rng.uniform(0, 255, 3)
        if min(np.linalg.norm(colour - a) for a in avoid) > 80:
            break
    return colour


def render_image(rng: np.random.Generator, size: int,
                 radius_range: Tuple[float, float] = RADIUS_RANGE
                 ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """One RGB uint8 image and its objects: {category_id, segmentation, bbox, area, iscrowd}."""
    image = _background(rng, size)
    objects, colours = [], []
    for kind, polygon, visible in _place_shapes(rng, size, radius_range):
        # painting only the visible part is the same as painting it whole, then the shapes above
        colours.append(_colour(rng, [image[visible > 0].mean(0)] + colours))
        image[visible > 0] = colours[-1] + rng.normal(0, 5, (int(visible.sum()), 3))
        if polygon is None:
            segmentation = mask_to_rle(visible)  # occluded: its visible part, as RLE
        elif rng.random() < 0.15:
            segmentation = _uncompressed_rle(visible)
        else:
            segmentation = [polygon]
        box = mask_util.toBbox(mask_util.encode(np.asfortranarray(visible))).tolist()
        objects.append({"category_id": kind + 1, "segmentation": segmentation, "bbox": box,
                        "area": float(visible.sum()), "iscrowd": 0})
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _is_complete(out_dir: str, params: Dict[str, Any]) -> bool:
    """True if both splits were fully written with these parameters (make_shapes is idempotent)."""
    for split in ("train", "val"):
        path = os.path.join(out_dir, f"instances_{split}.json")
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            data = json.load(f)
        if data.get("info", {}).get("params") != params or not all(
                os.path.isfile(os.path.join(out_dir, split, im["file_name"]))
                for im in data["images"]):
            return False
    return True


def make_shapes(out_dir: str = "dataset/shapes", num_train: Optional[int] = None,
                num_val: Optional[int] = None, image_size: int = 256, seed: int = 0,
                progress: bool = True,
                radius_range: Tuple[float, float] = RADIUS_RANGE) -> bool:
    """Write the data set to `out_dir` (train/, val/, instances_{train,val}.json).

    Sizes default to 1000 train / 100 val images, 300 / 50 in quick mode. `radius_range` sets
    the shapes' size (fraction of the image side): another range is another data set (chapter
    03 fine-tunes on smaller shapes). Does nothing and returns False when the data set already
    exists with the same parameters.
    """
    from tqdm.auto import tqdm

    quick = quick_mode()
    num_train = num_train if num_train is not None else (300 if quick else 1000)
    num_val = num_val if num_val is not None else (50 if quick else 100)
    params = {"version": VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed}
    if tuple(radius_range) != RADIUS_RANGE:  # the default stays out: existing sets stay valid
        params["radius_range"] = list(radius_range)
    if _is_complete(out_dir, params):
        return False
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(CLASSES)]
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"shapes {split}", disable=not progress):
            image, objects = render_image(np.random.default_rng([seed, split_id, i]), image_size,
                                          radius_range)
            name = f"{i:06d}.jpg"
            cv2.imwrite(os.path.join(out_dir, split, name), image[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append({"id": i + 1, "file_name": name, "width": image_size,
                           "height": image_size})
            annotations += [{"id": len(annotations) + k + 1, "image_id": i + 1, **obj}
                            for k, obj in enumerate(objects)]
        stale = count  # images of an earlier, larger build: not listed, so remove them
        while os.path.isfile(os.path.join(out_dir, split, f"{stale:06d}.jpg")):
            os.remove(os.path.join(out_dir, split, f"{stale:06d}.jpg"))
            stale += 1
        data = {"info": {"description": "mrtdetr synthetic shapes", "params": params},
                "images": images, "annotations": annotations, "categories": categories}
        path = os.path.join(out_dir, f"instances_{split}.json")
        # json last and atomically: a partial run is redone
        atomic_write(path, lambda tmp, data=data: Path(tmp).write_text(json.dumps(data)))
    return True
