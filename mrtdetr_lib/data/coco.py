"""COCO-format instance segmentation data: images, classes, boxes and polygon/RLE masks.

Mirrors PaddleDetection's `COCODataSet` (`ppdet/data/source/coco.py`) as the Mask RT-DETR configs
use it: crowd regions and `ignore`d or degenerate boxes are left out of the targets, images left
with no object are skipped unless `allow_empty` (for evaluation too, as ppdet's EvalDataset), and
COCO's category ids are mapped to contiguous labels 0..K-1 (`cat_ids[label]` maps back when
results are written). A sample is a dict that the transforms (transforms.py) turn into model
inputs; the collate function (loader.py) batches them.
"""

import contextlib
import io
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from ..errors import UserError
from .check import annotation_number_problems

Segmentation = Union[List[List[float]], Dict[str, Any]]


def load_coco(anno_path: str) -> COCO:
    """pycocotools' COCO index of a json file, without its progress prints."""
    if not os.path.isfile(anno_path):
        raise FileNotFoundError(f"annotation file not found: {anno_path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(anno_path)


def segmentation_to_mask(segm: Segmentation, height: int, width: int) -> np.ndarray:
    """One COCO segmentation (polygons, RLE or uncompressed RLE) -> [H,W] uint8 mask."""
    if isinstance(segm, list):
        # an object may have several polygon parts: rasterise each, then take their union
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, height, width)))
    if [int(v) for v in segm["size"]] != [height, width]:
        raise UserError(f"RLE size {list(segm['size'])} differs from the image size "
                        f"{[height, width]}")
    if isinstance(segm["counts"], list):  # uncompressed RLE (COCO's crowd regions use it)
        return mask_util.decode(mask_util.frPyObjects(segm, height, width))
    counts = segm["counts"]
    return mask_util.decode({"size": [height, width],
                             "counts": counts.encode() if isinstance(counts, str) else counts})


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    """[H,W] mask -> compressed COCO RLE with a json-friendly str `counts`."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _valid_segmentation(segm: Any) -> Optional[Segmentation]:
    """The usable part of an annotation's segmentation, or None if nothing usable is left."""
    if isinstance(segm, dict):
        return segm if "counts" in segm and "size" in segm else None
    if not isinstance(segm, list):
        return None
    # pycocotools reads a 4-number "polygon" as a box; fewer than 3 points enclose nothing
    parts = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    return parts or None


class COCOInstanceDataset(paddle.io.Dataset):
    """COCO instances as sample dicts; `train=False` yields images only (with im_id, orig_size).

    `dataset[i]` draws the augmentation seed from numpy's global generator; `dataset[(i, seed)]`
    fixes it, so a sampler that hands out seeds makes runs reproducible for any worker count.
    """

    def __init__(self, image_dir: str, anno_path: str, transforms: Sequence[Callable] = (),
                 train: bool = True, allow_empty: bool = False,
                 max_images: Optional[int] = None, collate_fn: Optional[Callable] = None):
        super().__init__()
        self.image_dir, self.anno_path = image_dir, anno_path
        self.transforms, self.train, self.collate_fn = list(transforms), train, collate_fn
        self.coco = load_coco(anno_path)
        self.cat_ids: List[int] = sorted(self.coco.getCatIds())  # label -> COCO category id
        self.catid2clsid = {cat: label for label, cat in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.records = self._parse(allow_empty)
        if max_images is not None:
            self.records = self.records[:max_images]
        if not self.records:
            raise UserError(f"{anno_path}: no usable images (images without objects are "
                            "skipped unless allow_empty=True)")

    def _parse(self, allow_empty: bool) -> List[Dict[str, Any]]:
        has_annotations = "annotations" in self.coco.dataset  # image-info-only files: no targets
        records, dropped = [], 0
        for im_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[im_id]
            objects = []
            for ann in self.coco.imgToAnns.get(im_id, []):
                self._check_numbers(ann)
                # crowd regions are not objects to detect: ppdet leaves them out (load_crowd=False)
                if ann.get("iscrowd", 0) or ann.get("ignore", False):
                    continue
                obj = self._parse_annotation(ann)
                dropped += obj is None
                if obj is not None:
                    objects.append(obj)
            if has_annotations and not objects and not allow_empty:
                continue
            records.append(self._record(info, objects))
        if dropped:
            warnings.warn(f"{self.anno_path}: left out {dropped} annotations with a degenerate "
                          "box or no usable segmentation (run data_scripts/check_dataset.py)",
                          stacklevel=2)
        return records

    def _check_numbers(self, ann: Dict[str, Any]) -> None:
        """Raise on a NaN, infinity or bad RLE count in any annotation, crowd or not."""
        # a NaN box passes the degenerate-box test below (every comparison with NaN is False)
        problems = annotation_number_problems(ann)
        if problems:
            raise UserError(f"{self.anno_path}: annotation {ann.get('id')}: "
                            f"{'; '.join(problems.values())} (run data_scripts/check_dataset.py)")

    def _parse_annotation(self, ann: Dict[str, Any]) -> Optional[Tuple[int, list, Any, int]]:
        """(label, box xyxy, segmentation, ann id), or None when the box or mask is unusable."""
        if len(ann.get("bbox", ())) != 4:
            return None
        x, y, w, h = (float(v) for v in ann["bbox"])
        segm = _valid_segmentation(ann.get("segmentation"))
        if w <= 1e-5 or h <= 1e-5 or ann.get("area", 1) <= 0 or segm is None:
            return None
        if ann["category_id"] not in self.catid2clsid:
            raise UserError(f"{self.anno_path}: annotation {ann['id']} has category id "
                            f"{ann['category_id']}, not in the categories {self.cat_ids}")
        return self.catid2clsid[ann["category_id"]], [x, y, x + w, y + h], segm, ann["id"]

    def _record(self, info: Dict[str, Any], objects: list) -> Dict[str, Any]:
        labels, boxes, segms, ann_ids = zip(*objects) if objects else ((), (), (), ())
        return {"im_file": os.path.join(self.image_dir, info["file_name"]),
                "im_id": np.array([info["id"]], np.int64),
                "h": int(info["height"]), "w": int(info["width"]),
                "gt_class": np.array(labels, np.int32).reshape(-1, 1),
                "gt_bbox": np.array(boxes, np.float32).reshape(-1, 4),
                "gt_poly": list(segms), "ann_ids": list(ann_ids)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1)) if self.train else 0
        sample = dict(self.records[int(index)])
        if not self.train:
            sample = {k: v for k, v in sample.items() if not k.startswith("gt_")}
        rng = np.random.default_rng(seed)
        for transform in self.transforms:
            sample = transform(sample, rng)
        sample["seed"] = seed  # the collate function seeds the batch transforms from these
        return sample
