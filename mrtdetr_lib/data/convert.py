"""Convert annotation tools' files to a COCO instance data set: LabelMe, YOLO-seg, VOC-style masks.

The logic of `data_scripts/x2coco.py`, which has PaddleDetection's `tools/x2coco.py` command line
and output layout: `annotations/instance_{train,val,test}.json`, images copied into `train/`,
`val/`, `test/`. Unlike it, each object's `area` and `bbox` come from the object's rasterised
mask (pycocotools), not from its box; the split is a seeded shuffle of the sorted inputs; and
every bad input is one line naming the file and the shape, all collected and raised together
(a UserError) before anything is written.

- `labelme`: polygon, rectangle, circle, oriented_rectangle and mask shapes (labelme >= 5.2 saves
  a mask shape as a base64 PNG cropped to the box its two points give). Shapes with the same label
  and `group_id` are one object: several polygons, or one RLE when a mask is among them.
  `__ignore__` shapes become crowd regions (`iscrowd` 1), one per category, never ordinary
  objects: COCOeval ignores the detections that fall in a crowd region of their category, and the
  data set's loader leaves crowd regions out of the targets. `imagePath` is relative to the json;
  when that file is absent the embedded `imageData` is written out as the image. A labels file
  (labelme's labels.txt: one name a line, `__ignore__` and `_background_` first) fixes category
  order and ids; without one the categories are the labels seen, in sorted order. Points are
  COCO's continuous coordinates, passed through (as labelme's own labelme2coco example does);
  labelme's PIL rasteriser paints about half a pixel more on each side.
- `yolo_seg`: one `.txt` per image (ultralytics' layout), a line `class x1 y1 x2 y2 ...` per object
  with coordinates normalised to 0..1; class k is category id k+1, named by `data.yaml`'s `names:`
  or a classes.txt. An image without a label file is an image without objects.
- `masks`: instance-id PNGs (VOC `SegmentationObject`: 0 background, k = instance k, 255 the void
  border, part of no object) beside class-id PNGs (`SegmentationClass`); palette PNGs are read as
  their palette indices. Line k of the class-names file names class value k; line 0 is the
  background. Without class PNGs every instance is of one class.
A COCO json from CVAT or Roboflow needs no converter: check it with `data_scripts/check_dataset.py`.
"""

import base64
import io
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import yaml
from PIL import Image

from ..errors import UserError
from ..files import atomic_write
from .coco import mask_to_rle

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
POINT_TOLERANCE = 1.0  # pixels a point may lie outside the image (clicks on the border)
IGNORE, BACKGROUNDS = "__ignore__", ("_background_", "background", "__background__")
Part = Union[List[float], np.ndarray]  # a flat polygon [x1, y1, ...] or a [H,W] mask


class BadShape(UserError):
    """One shape (or line) that cannot be converted; the caller adds its file and name."""


@dataclass
class Sample:
    """One image: where its pixels come from, its size and its objects (COCO fields, no ids)."""

    source: str  # the annotation file, for messages
    file_name: str  # the image's name in its output split folder
    width: int
    height: int
    image_path: Optional[str] = None  # the file to copy, or
    image_bytes: Optional[bytes] = None  # the bytes to write (labelme's embedded imageData)
    objects: List[Dict[str, Any]] = field(default_factory=list)


def read_class_names(path: str) -> List[str]:
    """Names from a data.yaml's `names:` (list or {index: name}) or a text file, one a line."""
    if not os.path.isfile(path):
        raise UserError(f"labels file not found: {path}")
    if path.lower().endswith((".yaml", ".yml")):
        try:
            names = (yaml.safe_load(Path(path).read_text()) or {}).get("names")
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not readable yaml: {err}") from err
        if isinstance(names, dict):
            if sorted(names) != list(range(len(names))):
                raise UserError(f"{path}: names: keys {sorted(names)} are not 0..{len(names) - 1}")
            names = [names[k] for k in range(len(names))]
        if not isinstance(names, list) or not names:
            raise UserError(f"{path}: no `names:` list or mapping of class names")
        return [str(name) for name in names]
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: no class names (one name a line)")
    return names


def image_size(source: Union[str, bytes]) -> Tuple[int, int]:
    """(width, height) of an image file or its bytes as displayed (EXIF rotation applied)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # 90 or 270 degrees
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise UserError(f"cannot be read as an image: {err}") from err
    return (height, width) if rotated else (width, height)


def coco_object(category_id: int, parts: Sequence[Part], height: int, width: int,
                iscrowd: int = 0) -> Optional[Dict[str, Any]]:
    """A COCO object from polygons and/or masks, area and bbox from its pixels; None if empty."""
    polygons = [p for p in parts if not isinstance(p, np.ndarray)]
    masks = [p.astype(bool) for p in parts if isinstance(p, np.ndarray)]
    rles = mask_util.frPyObjects(polygons, height, width) if polygons else []
    if masks or iscrowd:  # one RLE of the union: COCO's crowd regions, and masks, are RLE
        mask = np.logical_or.reduce(masks + [mask_util.decode(r).astype(bool) for r in rles])
        segmentation, rle = mask_to_rle(mask), mask_util.encode(np.asfortranarray(mask, np.uint8))
    else:
        segmentation, rle = polygons, mask_util.merge(rles)
    area = float(mask_util.area(rle))
    if area == 0:
        return None
    return {"category_id": category_id, "segmentation": segmentation, "area": area,
            "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": iscrowd}


def _points_in_image(points: Any, width: int, height: int) -> np.ndarray:
    """[P,2] float points, clipped to the image; BadShape if a point is further out."""
    xy = np.asarray(points, float).reshape(-1, 2)
    outside = ((xy[:, 0] < -POINT_TOLERANCE) | (xy[:, 0] > width + POINT_TOLERANCE)
               | (xy[:, 1] < -POINT_TOLERANCE) | (xy[:, 1] > height + POINT_TOLERANCE))
    if outside.any():
        x, y = xy[np.flatnonzero(outside)[0]]
        raise BadShape(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    return np.clip(xy, 0, [width, height])


def _circle_polygon(center: np.ndarray, edge: np.ndarray) -> List[float]:
    """A polygon within 0.25 px of the circle through `edge` around `center`."""
    radius = float(np.linalg.norm(edge - center))
    corners = max(16, math.ceil(math.pi / math.acos(max(1 - 0.25 / max(radius, 1e-6), -1))))
    t = 2 * np.pi * np.arange(corners) / corners
    return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], 1).ravel(
    ).tolist()


def labelme_part(shape: Dict[str, Any], width: int, height: int) -> Part:
    """A labelme shape as a flat polygon (polygon, rectangle, circle) or a [H,W] mask."""
    kind, points = shape.get("shape_type") or "polygon", shape.get("points") or []
    wanted = {"rectangle": 2, "circle": 2, "mask": 2, "oriented_rectangle": 4}.get(kind)
    if kind not in ("polygon", "rectangle", "circle", "mask", "oriented_rectangle"):
        raise BadShape("has no area (only polygon, rectangle, circle, oriented_rectangle and mask "
                       "shapes are objects)")
    if wanted and len(points) != wanted:
        raise BadShape(f"has {len(points)} points, a {kind} has {wanted}")
    if kind == "polygon" and len(points) < 3:
        raise BadShape(f"has {len(points)} points, a polygon needs at least 3")
    xy = _points_in_image(points, width, height)
    if kind == "rectangle":
        (x1, y1), (x2, y2) = xy.min(0).tolist(), xy.max(0).tolist()
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    if kind == "circle":
        return _circle_polygon(xy[0], xy[1])
    if kind == "mask":
        return _labelme_mask(shape, xy, width, height)
    return xy.ravel().tolist()


def _labelme_mask(shape: Dict[str, Any], xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """The full-image mask of a labelme mask shape (its PNG is the box from points[0] to [1])."""
    try:
        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) > 0
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise BadShape(f"has no readable base64 PNG `mask`: {err}") from err
    (x1, y1), (x2, y2) = xy.astype(int)  # labelme's own rasteriser truncates the corners too
    if crop.shape[:2] != (y2 - y1 + 1, x2 - x1 + 1):
        raise BadShape(f"mask is {crop.shape[1]}x{crop.shape[0]} but its points give a "
                       f"{x2 - x1 + 1}x{y2 - y1 + 1} box")
    mask = np.zeros((height, width), bool)
    mask[y1:y2 + 1, x1:x2 + 1] = crop[:height - y1, :width - x1]
    return mask


def _labelme_image(data: Dict[str, Any], json_path: str, image_dir: Optional[str]
                   ) -> Tuple[str, Optional[str], Optional[bytes]]:
    """(file name, image file to copy, or embedded bytes) of a labelme json."""
    relative = str(data.get("imagePath") or "").replace("\\", "/")  # Windows-made files
    name = os.path.basename(relative) or Path(json_path).stem + ".jpg"
    candidates = [os.path.join(os.path.dirname(json_path), relative)] if relative else []
    candidates += [os.path.join(image_dir, name)] if image_dir else []
    for path in candidates:
        if os.path.isfile(path):
            return name, path, None
    if data.get("imageData"):
        image_bytes = base64.b64decode(data["imageData"])
        if not os.path.splitext(name)[1]:
            name += ".png" if image_bytes[:4] == b"\x89PNG" else ".jpg"
        return name, None, image_bytes
    raise UserError(f"image not found (looked for {' and '.join(candidates) or 'imagePath'}) "
                     "and no imageData embedded")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"not readable json: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UserError("not a labelme file (no `shapes` list)")
    return data


def _labelme_file(json_path: str, image_dir: Optional[str], problems: List[str]
                  ) -> Optional[Tuple[Sample, Dict[Tuple[str, Any], List[Part]], List[Part]]]:
    """A sample with its objects' parts by (label, group), and its ignore regions' parts."""
    try:
        data = _read_json(json_path)
        name, path, image_bytes = _labelme_image(data, json_path, image_dir)
        width, height = image_size(path or image_bytes)
    except UserError as err:
        problems.append(f"{json_path}: {err}")
        return None
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if None not in declared and tuple(declared) != (width, height):
        problems.append(f"{json_path}: the json says {declared[0]}x{declared[1]} (w x h) but the "
                        f"image is {width}x{height}")
        return None
    sample = Sample(json_path, name, width, height, path, image_bytes)
    objects: Dict[Tuple[str, Any], List[Part]] = {}
    ignore: List[Part] = []
    for k, shape in enumerate(data["shapes"]):
        label = str(shape.get("label", ""))
        try:
            part = labelme_part(shape, width, height)
        except BadShape as err:
            problems.append(f"{json_path}: shape {k} ({shape.get('shape_type') or 'polygon'} "
                            f"{label!r}): {err}")
            continue
        if label == IGNORE:
            ignore.append(part)
        else:  # labelme's own rule: one object per (label, group_id); no group_id, its own
            group = shape.get("group_id")
            objects.setdefault((label, ("shape", k) if group is None else group), []).append(part)
    return sample, objects, ignore


def labelme_names(labels: Optional[str], seen: Sequence[str]) -> List[str]:
    """Category names in id order: the labels file's (labelme's convention) or the sorted seen."""
    if labels is None:
        return sorted(set(seen))
    return [n for n in read_class_names(labels) if n != IGNORE and n not in BACKGROUNDS]


def load_labelme(json_dir: str, image_dir: Optional[str], labels: Optional[str],
                 problems: List[str]) -> Tuple[List[Sample], List[str]]:
    """Samples and category names of a folder of labelme json files."""
    files = [_labelme_file(os.path.join(json_dir, name), image_dir, problems)
             for name in sorted(os.listdir(json_dir)) if name.lower().endswith(".json")]
    files = [f for f in files if f is not None]
    names = labelme_names(labels, [label for _, objects, _ in files for label, _ in objects])
    ids = {name: k + 1 for k, name in enumerate(names)}
    for sample, objects, ignore in files:
        for (label, _), parts in objects.items():
            if label not in ids:
                problems.append(f"{sample.source}: label {label!r} is not in the labels file "
                                f"{labels} ({', '.join(names)})")
                continue
            obj = coco_object(ids[label], parts, sample.height, sample.width)
            if obj is None:
                problems.append(f"{sample.source}: object {label!r} covers no pixel")
            else:
                sample.objects.append(obj)
        if ignore:  # COCOeval matches crowd regions per category: one region for each
            sample.objects += [coco_object(k, ignore, sample.height, sample.width, iscrowd=1)
                               for k in ids.values()]
            sample.objects = [obj for obj in sample.objects if obj is not None]
    return [sample for sample, _, _ in files], names


def _images_by_stem(image_dir: str) -> Dict[str, str]:
    return {Path(name).stem: os.path.join(image_dir, name) for name in sorted(os.listdir(image_dir))
            if name.lower().endswith(IMAGE_SUFFIXES)}


def yolo_line_part(line: str, num_classes: int, width: int, height: int) -> Tuple[int, Part]:
    """(class, flat polygon in pixels) of one YOLO segmentation line."""
    tokens = line.split()
    if not tokens[0].isdigit() or int(tokens[0]) >= num_classes:
        raise BadShape(f"class {tokens[0]!r} is not one of 0..{num_classes - 1}")
    try:
        coords = [float(t) for t in tokens[1:]]
    except UserError as err:
        raise BadShape(f"has a coordinate that is not a number: {err}") from err
    if len(coords) % 2:
        raise BadShape(f"has {len(coords)} coordinates, an odd number")
    if len(coords) < 6:
        raise BadShape(f"has {len(coords) // 2} points, a polygon needs at least 3 (`class cx cy "
                       "w h` is a YOLO detection box, not a yolo_seg polygon)")
    xy = np.asarray(coords).reshape(-1, 2) * [width, height]
    return int(tokens[0]), _points_in_image(xy, width, height).ravel().tolist()


def load_yolo_seg(label_dir: str, image_dir: str, labels: Optional[str],
                  problems: List[str]) -> Tuple[List[Sample], List[str]]:
    """Samples and class names of YOLO segmentation labels (one .txt per image)."""
    if labels is None:
        raise UserError("yolo_seg needs the class names: --labels data.yaml (its `names:`) or "
                         "classes.txt")
    names = read_class_names(labels)
    label_files = {Path(name).stem: os.path.join(label_dir, name)
                   for name in sorted(os.listdir(label_dir)) if name.endswith(".txt")
                   and not os.path.samefile(os.path.join(label_dir, name), labels)}
    samples = []
    for stem, path in _images_by_stem(image_dir).items():
        try:
            width, height = image_size(path)
        except UserError as err:
            problems.append(f"{path}: {err}")
            continue
        sample = Sample(label_files.get(stem, path), os.path.basename(path), width, height, path)
        lines = Path(label_files.pop(stem)).read_text().splitlines() if stem in label_files else []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                label, polygon = yolo_line_part(line, len(names), width, height)
            except BadShape as err:
                problems.append(f"{sample.source}: line {number}: {err}")
                continue
            obj = coco_object(label + 1, [polygon], height, width)
            if obj is None:
                problems.append(f"{sample.source}: line {number}: the polygon covers no pixel")
            else:
                sample.objects.append(obj)
        samples.append(sample)
    problems += [f"{path}: no image {stem}.* in {image_dir}" for stem, path in label_files.items()]
    return samples, names


def read_index_png(path: str) -> np.ndarray:
    """[H,W] ids of a palette, grayscale or 16-bit PNG (a palette PNG's indices, not colours)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I;16", "I"):  # RGB(A) would be colours, not ids
                raise UserError(f"is a {image.mode} image, not a palette or grayscale id image")
            return np.asarray(image)  # uint8 for P and L, wider for the 16-bit modes
    except OSError as err:
        raise UserError(f"cannot be read as an image: {err}") from err


def mask_names(labels: Optional[str], with_classes: bool) -> List[str]:
    """Category names for class values 1..K (line 0 of the labels file is the background)."""
    if labels is None:
        if with_classes:
            raise UserError("masks with class PNGs need --labels: line k names class value k")
        return ["object"]
    names = [n for n in read_class_names(labels) if n != IGNORE]  # labelme2voc's labels.txt
    if names[0] not in BACKGROUNDS:
        raise UserError(f"{labels}: line 0 is {names[0]!r}; it names class value 0, the "
                         f"background ({' or '.join(BACKGROUNDS)})")
    return names[1:] if with_classes else names[1:2]


def _mask_objects(ids: np.ndarray, classes: Optional[np.ndarray], num_names: int, void: bool
                  ) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The objects of an instance-id image (and class-id image), and what is wrong."""
    objects, problems = [], []
    for k in np.unique(ids):
        if k == 0 or (void and k == 255):
            continue
        mask = ids == k
        category = 1
        if classes is not None:
            values = classes[mask]
            values = values[(values != 0) & (values != 255)]
            if not values.size:
                problems.append(f"instance {k} has class 0 or 255 in the class image everywhere")
                continue
            category = int(np.bincount(values).argmax())
            if category > num_names:
                problems.append(f"instance {k} has class value {category}, beyond the "
                                f"{num_names} class names")
                continue
        objects.append(coco_object(category, [mask], *mask.shape))
    return objects, problems


def load_masks(object_dir: str, image_dir: str, labels: Optional[str], class_dir: Optional[str],
               problems: List[str]) -> Tuple[List[Sample], List[str]]:
    """Samples and class names of instance-id PNGs (and class-id PNGs), VOC style."""
    names = mask_names(labels, class_dir is not None)
    images = _images_by_stem(image_dir)
    samples = []
    for name in sorted(os.listdir(object_dir)):
        if not name.lower().endswith(".png"):
            continue
        path, stem = os.path.join(object_dir, name), Path(name).stem
        try:
            if stem not in images:
                raise UserError(f"no image {stem}.* in {image_dir}")
            width, height = image_size(images[stem])
            ids = read_index_png(path)
            if class_dir and not os.path.isfile(os.path.join(class_dir, name)):
                raise UserError(f"no class image {name} in {class_dir}")
            classes = read_index_png(os.path.join(class_dir, name)) if class_dir else None
        except UserError as err:
            problems.append(f"{path}: {err}")
            continue
        shapes = {ids.shape, (height, width)} | ({classes.shape} if classes is not None else set())
        if len(shapes) > 1:
            problems.append(f"{path}: the image, instance and class images differ in size "
                            f"({', '.join(f'{w}x{h}' for h, w in shapes)})")
            continue
        # 255 is VOC's void border in 8-bit id images; a 16-bit image may use it as an id
        objects, errors = _mask_objects(ids, classes, len(names), ids.dtype == np.uint8)
        problems += [f"{path}: {error}" for error in errors]
        samples.append(Sample(path, os.path.basename(images[stem]), width, height, images[stem],
                              objects=objects))
    return samples, names


def split_samples(samples: Sequence[Sample], proportions: Sequence[float], seed: int
                  ) -> Dict[str, List[Sample]]:
    """Splits with a non-zero proportion: a seeded shuffle of the samples sorted by file name."""
    ordered = sorted(samples, key=lambda s: (s.file_name, s.source))  # not file-system order
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    num_val, num_test = (round(len(shuffled) * p) for p in proportions[1:])
    bounds = {"train": (0, len(shuffled) - num_val - num_test),
              "val": (len(shuffled) - num_val - num_test, len(shuffled) - num_test),
              "test": (len(shuffled) - num_test, len(shuffled))}
    return {split: sorted(shuffled[slice(*bounds[split])], key=lambda s: s.file_name)
            for split, p in zip(SPLITS, proportions) if p > 0}


def write_split(output_dir: str, split: str, samples: Sequence[Sample], names: Sequence[str]
                ) -> str:
    """Copy the images into output_dir/split/ and write annotations/instance_{split}.json."""
    os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    images, annotations = [], []
    for image_id, sample in enumerate(samples, 1):
        target = os.path.join(output_dir, split, sample.file_name)
        if sample.image_bytes is not None:
            Path(target).write_bytes(sample.image_bytes)
        elif not (os.path.exists(target) and os.path.samefile(sample.image_path, target)):
            shutil.copyfile(sample.image_path, target)
        images.append({"id": image_id, "file_name": sample.file_name, "width": sample.width,
                       "height": sample.height})
        annotations += [{"id": len(annotations) + k + 1, "image_id": image_id, **obj}
                        for k, obj in enumerate(sample.objects)]
    data = {"info": {"description": "written by mrtdetr_lib.data.convert"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": ""}
                           for k, name in enumerate(names)]}
    path = os.path.join(output_dir, "annotations", f"instance_{split}.json")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data)))


def _check_inputs(dataset_type: str, folders: Dict[str, Optional[str]],
                  proportions: Sequence[float]) -> None:
    if dataset_type not in ("labelme", "yolo_seg", "masks"):
        raise UserError(f"dataset_type {dataset_type!r} is not one of labelme, yolo_seg, masks")
    for flag, folder in folders.items():
        if folder is not None and not os.path.isdir(folder):
            raise UserError(f"--{flag} is not a folder: {folder}")
    if len(proportions) != 3 or min(proportions) < 0 or abs(sum(proportions) - 1) > 1e-5:
        raise UserError(f"train/val/test proportions {list(proportions)} must be >= 0 and sum "
                         "to 1")


def convert(dataset_type: str, json_input_dir: str, image_input_dir: Optional[str],
            output_dir: str, proportions: Sequence[float] = (1.0, 0.0, 0.0), seed: int = 0,
            keep_empty: bool = False, labels: Optional[str] = None,
            class_input_dir: Optional[str] = None) -> Dict[str, Tuple[int, int]]:
    """Convert a folder of annotations to COCO in output_dir; {split: (images, objects)}.

    `json_input_dir` holds the labelme json files, the YOLO .txt labels or the instance-id PNGs;
    `image_input_dir` the images (optional for labelme: `imagePath` is relative to its json).
    Raises a UserError listing every bad input, one a line, before anything is written.
    """
    if json_input_dir is None:
        raise UserError("give --json_input_dir: the folder of annotation files")
    if dataset_type != "labelme" and image_input_dir is None:
        raise UserError(f"{dataset_type} needs --image_input_dir (the images)")
    _check_inputs(dataset_type, {"json_input_dir": json_input_dir,
                                 "image_input_dir": image_input_dir,
                                 "class_input_dir": class_input_dir}, proportions)
    problems: List[str] = []
    if dataset_type == "labelme":
        samples, names = load_labelme(json_input_dir, image_input_dir, labels, problems)
    elif dataset_type == "yolo_seg":
        samples, names = load_yolo_seg(json_input_dir, image_input_dir, labels, problems)
    else:
        samples, names = load_masks(json_input_dir, image_input_dir, labels, class_input_dir,
                                    problems)
    seen: Dict[str, str] = {}
    for sample in samples:  # two inputs must not write the same output image
        if sample.file_name in seen:
            problems.append(f"{sample.source}: image name {sample.file_name} is also used by "
                            f"{seen[sample.file_name]}")
        seen[sample.file_name] = sample.source
    if problems:
        raise UserError("\n".join(problems))
    kept = [s for s in samples if keep_empty or any(not o["iscrowd"] for o in s.objects)]
    if not kept:
        raise UserError(f"{json_input_dir}: no image with an object (--keep_empty keeps images "
                         "without objects)")
    counts = {}
    for split, split_samples_ in split_samples(kept, proportions, seed).items():
        write_split(output_dir, split, split_samples_, names)
        counts[split] = (len(split_samples_), sum(len(s.objects) for s in split_samples_))
    return counts
