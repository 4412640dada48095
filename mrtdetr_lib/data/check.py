"""Check a COCO-format instance data set and report every problem with its file and ids.

The logic of `data_scripts/check_dataset.py`; notebooks call `check_dataset` directly. It looks
for what would crash training or quietly spoil its targets: missing, corrupt or truncated images,
image sizes that disagree with the json, boxes outside the image or of non-positive size, empty
or degenerate polygons, RLE of the wrong size, unknown categories or images, duplicate ids, and a
NaN or infinity anywhere in an annotation (`annotation_number_problems`, which the data set's
loader calls too). It also gives the category ids training will use (`category_map`: sorted ids
to labels 0..K-1, as the loader maps them), fails when their number differs from the model's
`num_classes`, and warns about what exports of CVAT and Roboflow leave for training to skip: a
category no annotation uses (it still takes a label) and crowd regions (never targets). Images
with an EXIF orientation get a warning: viewers show them turned, training reads the frame the
json's size describes (see `transforms.Decode`).
"""

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image (float rounding in annotations)
EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 = as stored, 2..8 = to be mirrored and/or rotated


@dataclass
class Problem:
    """One problem: the file it is in, the image and annotation ids, what is wrong."""

    file: str
    message: str
    image_id: Optional[int] = None
    ann_id: Optional[int] = None

    def __str__(self) -> str:
        ids = [f"{name} {value}" for name, value in (("image id", self.image_id),
                                                      ("annotation id", self.ann_id))
               if value is not None]
        return f"{self.file}: {', '.join(ids) + ': ' if ids else ''}{self.message}"


@dataclass
class Report:
    """All problems of a data set, with its size; str() is the printable report."""

    problems: List[Problem] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    category_map: List[Tuple[Any, int, str]] = field(default_factory=list)  # see category_map()
    warnings: List[Problem] = field(default_factory=list)  # images to look at; not errors

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems] + [f"warning: {w}" for w in self.warnings]
        size = (f"{self.num_images} images, {self.num_annotations} annotations, "
                f"{self.num_categories} categories")
        lines.append(f"{len(self.problems)} problem(s) in {size}" if self.problems
                     else f"ok: {size}")
        if self.warnings:
            lines[-1] += f", {len(self.warnings)} warning(s)"
        return "\n".join(lines)

    def category_table(self) -> str:
        """The category ids training will use, one a line."""
        lines = [f"category id {cat_id} -> label {label}: {name}"
                 for cat_id, label, name in self.category_map]
        return "\n".join(lines)


def category_map(categories: List[Dict[str, Any]]) -> List[Tuple[Any, int, str]]:
    """(COCO category id, training label, name): the loader maps the sorted ids to 0..K-1."""
    ids = sorted(c["id"] for c in categories if isinstance(c.get("id"), int))
    names = {c["id"]: str(c.get("name", "")) for c in categories if isinstance(c.get("id"), int)}
    return [(cat_id, label, names[cat_id]) for label, cat_id in enumerate(ids)]


def _category_problems(data: Dict[str, Any], num_classes: Optional[int], anno_path: str
                       ) -> Tuple[List[Problem], List[str]]:
    """(problems, warnings): category ids that are no integers or do not fit `num_classes`;
    unused categories and crowd regions."""
    problems = [Problem(anno_path, f"category {str(c)[:80]} has no integer id")
                for c in data["categories"] if not isinstance(c.get("id"), int)]
    count = sum(isinstance(c.get("id"), int) for c in data["categories"])
    if num_classes is not None and count != num_classes:
        effect = (f"labels {num_classes}..{count - 1} are beyond the model's classes"
                  if count > num_classes else
                  f"{num_classes - count} of the model's classes never occur")
        problems.append(Problem(anno_path, f"{count} categories but num_classes is "
                                f"{num_classes}: {effect} (set -o num_classes={count})"))
    used = {ann.get("category_id") for ann in data["annotations"]}
    parents = {c.get("supercategory") for c in data["categories"]}
    notes = [f"category id {cat_id} ({name!r}) has no annotation but still takes label {label} "
             "and a class of the model" + (
                 ": it is the others' supercategory, as the project category 0 of Roboflow's "
                 "export (delete it from the json, or count it in num_classes)"
                 if name in parents else "")
             for cat_id, label, name in category_map(data["categories"]) if cat_id not in used]
    crowd = sum(bool(ann.get("iscrowd")) for ann in data["annotations"])
    if crowd:
        notes.append(f"{crowd} of {len(data['annotations'])} annotations are crowd regions "
                     "(iscrowd 1): training leaves them out of the targets (CVAT's COCO export "
                     "marks every object drawn as a mask so; polygons export as iscrowd 0)")
    return problems, [Problem(anno_path, note) for note in notes]


def _duplicates(items: List[Dict[str, Any]]) -> List[Any]:
    seen, dups = set(), []
    for item in items:
        key = item.get("id")
        if key in seen:
            dups.append(key)
        seen.add(key)
    return dups


def _non_finite(value: Any, path: str) -> Iterator[Tuple[str, float]]:
    """(path, number) of each NaN or infinity inside a json value, e.g. ('bbox[2]', nan)."""
    # json reads NaN/Infinity literals as floats; ints are always finite
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{k}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}")


def _is_run_length(count: Any) -> bool:
    """An uncompressed RLE count is a whole number of pixels >= 0."""
    # 2.0 passes: converters that go through float arrays write it, and pycocotools reads it
    whole = (isinstance(count, int) and not isinstance(count, bool)) or (
        isinstance(count, float) and count.is_integer())
    return whole and count >= 0


def annotation_number_problems(ann: Dict[str, Any]) -> Dict[str, str]:
    """Field -> what is wrong with its numbers: a NaN or infinity, an RLE count not a whole >= 0."""
    # a NaN fails every comparison, so the box and polygon checks (and the loader) would pass it
    problems = {}
    for key, value in ann.items():
        bad = list(_non_finite(value, key))
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            problems[key] = f"{bad[0][0]} is {bad[0][1]}, not a finite number{more}"
    segm = ann.get("segmentation")
    if ("segmentation" not in problems and isinstance(segm, dict)
            and isinstance(segm.get("counts"), list)):
        bad_counts = [k for k, count in enumerate(segm["counts"]) if not _is_run_length(count)]
        if bad_counts:
            k = bad_counts[0]
            problems["segmentation"] = (f"segmentation.counts[{k}] is {segm['counts'][k]!r}: "
                                        "uncompressed RLE counts are whole numbers >= 0")
    return problems


def _check_box(ann: Dict[str, Any], width: int, height: int) -> List[str]:
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) for v in box)):
        return [f"bbox {box!r} is not 4 numbers [x, y, w, h]"]
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return [f"bbox {box} has a non-positive size"]
    if (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE
            or y + h > height + BOX_TOLERANCE):
        return [f"bbox {box} (x2={x + w:g}, y2={y + h:g}) is outside the {width}x{height} image"]
    return []


def _check_polygons(segm: list) -> List[str]:
    if not segm:
        return ["empty segmentation (no polygon): a box without a mask (CVAT writes [] for "
                "rectangles), which training leaves out"]
    messages = []
    for k, poly in enumerate(segm):
        if not (isinstance(poly, list) and all(isinstance(v, (int, float)) for v in poly)):
            messages.append(f"polygon {k} is not a list of numbers")
        elif len(poly) % 2:
            messages.append(f"polygon {k} has an odd number of coordinates ({len(poly)})")
        elif len(poly) < 6:
            messages.append(f"polygon {k} has {len(poly) // 2} points, fewer than 3")
        else:
            x, y = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
            if abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2 == 0:
                messages.append(f"polygon {k} has zero area")
    return messages


def _check_rle(segm: dict, width: int, height: int) -> List[str]:
    if "size" not in segm or "counts" not in segm:
        return ["RLE segmentation without 'size' and 'counts'"]
    if [int(v) for v in segm["size"]] != [height, width]:
        return [f"RLE size {segm['size']} differs from the image size [{height}, {width}]"]
    counts = segm["counts"]
    if isinstance(counts, list):
        if sum(counts) != height * width:
            return [f"uncompressed RLE covers {sum(counts)} pixels, the image has {height * width}"]
        area = sum(counts[1::2])  # runs alternate 0s and 1s, starting with 0s
    else:
        try:
            encoded = counts.encode() if isinstance(counts, str) else counts
            area = mask_util.area({"size": [height, width], "counts": encoded})
        except Exception as err:  # pycocotools raises plain Exceptions for bad strings
            return [f"RLE counts cannot be decoded: {err}"]
    # an empty target trains masks to vanish, and the scores with them: they learn the mask IoU
    if area == 0:
        return ["empty mask (an RLE of 0 pixels): a mask exported with the wrong value or size?"]
    return []


def _check_segmentation(ann: Dict[str, Any], width: int, height: int) -> List[str]:
    segm = ann.get("segmentation")
    if segm is None:
        return ["no segmentation"]
    if isinstance(segm, list):
        return _check_polygons(segm)
    if isinstance(segm, dict):
        return _check_rle(segm, width, height)
    return [f"segmentation of type {type(segm).__name__} is neither polygons nor RLE"]


def exif_orientation(path: str) -> int:
    """The EXIF orientation of an image file: 1 (as stored) when it has none or it is unreadable."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # what PIL raises on a broken header
        return 1


def _check_image_file(path: str, width: int, height: int) -> Tuple[Optional[str], Optional[str]]:
    """(what is wrong with an image file, what to look at), each None when there is nothing.

    Sizes are compared as the training reader decodes (`transforms.Decode`): the stored pixels,
    or the EXIF-rotated ones when only those have the json's size. Any EXIF orientation is a
    warning, square images included: the reader cannot tell which frame the annotations use.
    """
    if not os.path.isfile(path):
        return "image file not found", None
    data = np.fromfile(path, np.uint8)
    image = (cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
             if data.size else None)
    if image is None:
        return "image file cannot be decoded (empty, corrupt or not an image)", None
    tail = data[-1024:].tobytes()
    # libjpeg and libpng decode a cut-off file with a warning; the end marker tells
    if (data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in tail) or (
            data[:4].tobytes() == b"\x89PNG" and b"IEND" not in tail):
        return "image file is truncated (no end marker)", None
    orientation = exif_orientation(path)
    stored = image.shape[:2]
    upright = stored[::-1] if orientation in (5, 6, 7, 8) else stored  # turned by 90 degrees
    if (height, width) not in (stored, upright):
        turned = f", {upright[1]}x{upright[0]} upright (EXIF)" if upright != stored else ""
        return (f"image is {stored[1]}x{stored[0]} (w x h){turned} but the json says "
                f"{width}x{height}"), None
    if orientation == 1:
        return None, None
    frame = "as stored" if (height, width) == stored else "upright (EXIF rotation applied)"
    return None, (f"EXIF orientation {orientation}: viewers and most labelling tools show this "
                  f"image rotated or mirrored; training reads it {frame}, the frame of the "
                  f"json's {width}x{height}; make sure the annotations were drawn on that frame")


def _load(anno_path: str, report: Report) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(anno_path):
        report.problems.append(Problem(anno_path, "annotation file not found"))
        return None
    try:
        with open(anno_path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        report.problems.append(Problem(anno_path, f"not valid json: {err}"))
        return None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        report.problems.append(Problem(anno_path, f"no list {missing} at the top level"))
        return None
    return data


def _check_annotations(data: Dict[str, Any], images: Dict[Any, Dict[str, Any]],
                       anno_path: str) -> List[Problem]:
    category_ids = {c.get("id") for c in data["categories"]}
    problems = []
    for ann in data["annotations"]:
        im = images.get(ann.get("image_id"))
        bad_numbers = annotation_number_problems(ann)
        messages = list(bad_numbers.values())
        if im is None:
            messages.append(f"refers to image id {ann.get('image_id')}, not in the images")
        else:  # a field with a NaN gets that one message, not a second about its geometry
            if "bbox" not in bad_numbers:
                messages += _check_box(ann, im["width"], im["height"])
            if "segmentation" not in bad_numbers:
                messages += _check_segmentation(ann, im["width"], im["height"])
        if ann.get("category_id") not in category_ids:
            messages.append(f"unknown category id {ann.get('category_id')}")
        problems += [Problem(anno_path, m, ann.get("image_id"), ann.get("id")) for m in messages]
    return problems


def _check_image_files(images: List[Dict[str, Any]], image_dir: str, num_threads: int,
                       progress: bool) -> Tuple[List[Problem], List[Problem]]:
    """(problems, warnings) of the image files."""
    from tqdm.auto import tqdm

    paths = [os.path.join(image_dir, im["file_name"]) for im in images]
    with ThreadPoolExecutor(num_threads) as pool:  # cv2 decodes outside the GIL: threads help
        results = list(tqdm(pool.map(_check_image_file, paths, [im["width"] for im in images],
                                     [im["height"] for im in images]),
                            total=len(images), desc="images", disable=not progress))
    checked = list(zip(paths, images, results))
    problems = [Problem(path, error, im["id"]) for path, im, (error, _) in checked if error]
    warnings = [Problem(path, warn, im["id"]) for path, im, (_, warn) in checked if warn]
    return problems, warnings


def check_dataset(anno_path: str, image_dir: str, check_images: bool = True,
                  num_threads: int = 4, progress: bool = False,
                  num_classes: Optional[int] = None) -> Report:
    """Check a COCO json and its image folder; the Report lists every problem found.

    With `num_classes` (the model's), a category count that differs from it is a problem.
    """
    report = Report()
    data = _load(anno_path, report)
    if data is None:
        return report
    report.num_images, report.num_annotations = len(data["images"]), len(data["annotations"])
    report.num_categories = len(data["categories"])
    report.category_map = category_map(data["categories"])
    problems, report.warnings = _category_problems(data, num_classes, anno_path)
    report.problems += problems
    for key in ("categories", "images", "annotations"):
        report.problems += [Problem(anno_path, f"duplicate {key[:-1]} id {dup}")
                            for dup in _duplicates(data[key])]
    images = {}
    for im in data["images"]:
        if all(k in im for k in ("id", "file_name", "width", "height")):
            images[im["id"]] = im
        else:
            report.problems.append(Problem(anno_path, f"image entry {str(im)[:80]} lacks one of "
                                           "id, file_name, width, height", im.get("id")))
    report.problems += _check_annotations(data, images, anno_path)
    if check_images:
        problems, warnings = _check_image_files(list(images.values()), image_dir, num_threads,
                                                progress)
        report.problems += problems
        report.warnings += warnings
    return report
