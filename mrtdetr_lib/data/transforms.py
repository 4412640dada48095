"""The Mask RT-DETR readers' transforms, one small class per step.

Mirrors `ppdet/data/transform/operators.py` and `batch_operators.py` in the order of
`configs/mask_rtdetr/_base_/mask_rtdetr_reader.yml`. A sample is a dict: `image` [H,W,3] RGB
(uint8, float32 once expanded or resized), `im_shape` [2] (h, w), `scale_factor` [2],
`gt_class` [N,1] int32, `gt_bbox` [N,4] x1,y1,x2,y2 pixels, `gt_poly` (COCO segmentations, until
Poly2Mask) and `gt_segm` [N,H,W] uint8. Sample transforms are `t(sample, rng)`, batch transforms
`t(samples, rng)`, with `rng` a `np.random.Generator` (ppdet draws from global generators), so
augmentation is reproducible from a seed. Transforms return new dicts and never edit their input.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError
from .coco import segmentation_to_mask

Sample = Dict[str, Any]
# BatchRandomResize's random_interp choices, in ppdet's order
INTERPS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC,
           cv2.INTER_LANCZOS4)
EXPAND_FILL = (123.675, 116.28, 103.53)  # the reader's RandomExpand fill: ImageNet mean, RGB


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[N,H,W] masks -> [N,4] float32 tight x1,y1,x2,y2 (x2 = last column + 1; empty -> 0)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        if cols.size:
            boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


class Decode:
    """Read `im_file` -> RGB uint8 image; sets im_shape (h, w), scale_factor [1,1], orig_size.

    The pixels come in the frame the annotations were drawn on. A data set's sample carries the
    json's size (`h`, `w`): the image is read as stored, ignoring an EXIF orientation tag, as
    COCO's tools do (pycocotools' json sizes, torchvision's PIL reader; cv2's IMREAD_COLOR and
    ppdet's Decode would rotate it), unless only the EXIF-rotated image has the json's size (a
    tool that showed the photo upright: labelme, data/convert.py). `check_dataset` warns about
    every EXIF-rotated image. Without a json size (a user's photo: `read_image`) the orientation
    is applied, as a photo viewer shows it.
    """

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        path = sample["im_file"]
        where = f"{path} (image id {int(sample['im_id'][0])})" if "im_id" in sample else path
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as err:
            raise FileNotFoundError(f"cannot read image {where}: {err.strerror}") from None
        annotated = (sample["h"], sample["w"]) if "h" in sample else None
        flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if annotated else 0)
        image = cv2.imdecode(data, flags) if data.size else None
        if image is None:
            raise UserError(f"cannot decode image {where}: empty, corrupt or not an image")
        if annotated and image.shape[:2] != annotated:
            upright = cv2.imdecode(data, cv2.IMREAD_COLOR)  # EXIF orientation applied
            image = upright if upright.shape[:2] == annotated else image
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # cv2 decodes to BGR
        h, w = image.shape[:2]
        return {**sample, "image": image, "im_shape": np.array([h, w], np.float32),
                "scale_factor": np.ones(2, np.float32), "orig_size": np.array([h, w], np.int32)}


class Poly2Mask:
    """COCO segmentations `gt_poly` -> `gt_segm` [N,H,W] uint8 at the decoded image size."""

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        h, w = (int(v) for v in sample["im_shape"])
        masks = np.zeros((len(sample["gt_poly"]), h, w), np.uint8)
        for i, segm in enumerate(sample["gt_poly"]):
            try:
                masks[i] = segmentation_to_mask(segm, h, w)
            except (ValueError, TypeError, KeyError) as err:
                raise UserError(f"{sample['im_file']}: annotation {sample['ann_ids'][i]}: "
                                f"bad segmentation: {err}") from None
        out = {k: v for k, v in sample.items() if k != "gt_poly"}  # ppdet's del_poly=True
        return {**out, "gt_segm": masks}


def _blend(image: np.ndarray, other: Any, factor: float) -> np.ndarray:
    """PIL.ImageEnhance's rule: other + factor * (image - other), rounded into uint8."""
    out = other + factor * (image.astype(np.float32) - other)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class RandomDistort:
    """Colour jitter (ppdet's random_apply mode): brightness, contrast, saturation and hue in a
    random order, each applied with probability 1 - its third number; all with probability prob."""

    def __init__(self, hue: Sequence[float] = (-18, 18, 0.5),
                 saturation: Sequence[float] = (0.5, 1.5, 0.5),
                 contrast: Sequence[float] = (0.5, 1.5, 0.5),
                 brightness: Sequence[float] = (0.5, 1.5, 0.5), prob: float = 1.0):
        self.steps = [(self._brightness, brightness), (self._contrast, contrast),
                      (self._saturation, saturation), (self._hue, hue)]
        self.prob = prob

    @staticmethod
    def _brightness(image: np.ndarray, factor: float) -> np.ndarray:
        return _blend(image, 0.0, factor)

    @staticmethod
    def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
        gray_mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
        return _blend(image, np.float32(int(gray_mean + 0.5)), factor)

    @staticmethod
    def _saturation(image: np.ndarray, factor: float) -> np.ndarray:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return _blend(image, gray[..., None], factor)

    @staticmethod
    def _hue(image: np.ndarray, delta: float) -> np.ndarray:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        # ppdet shifts PIL's hue (0..255 per turn); cv2's uint8 hue is 0..179
        shift = int(round(delta * 180 / 256))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() > self.prob:
            return sample
        image = np.clip(sample["image"], 0, 255).astype(np.uint8)
        for k in rng.permutation(len(self.steps)):
            step, (low, high, skip_prob) = self.steps[k]
            if rng.random() >= skip_prob:
                image = step(image, rng.uniform(low, high))
        return {**sample, "image": image}


class RandomExpand:
    """Zoom out: put the image on a canvas up to `ratio` times larger, with probability 1 - prob."""

    def __init__(self, ratio: float = 4.0, prob: float = 0.5,
                 fill_value: Sequence[float] = (127.5, 127.5, 127.5)):
        self.ratio, self.prob, self.fill_value = ratio, prob, np.asarray(fill_value, np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            return sample
        image, masks = sample["image"], sample["gt_segm"]
        h, w = image.shape[:2]
        ratio = rng.uniform(1.0, self.ratio)
        out_h, out_w = int(h * ratio), int(w * ratio)
        if out_h <= h or out_w <= w:
            return sample
        y, x = int(rng.integers(0, out_h - h)), int(rng.integers(0, out_w - w))
        canvas = np.empty((out_h, out_w, 3), np.float32)
        canvas[:] = self.fill_value
        canvas[y:y + h, x:x + w] = image
        out_masks = np.zeros((len(masks), out_h, out_w), np.uint8)
        out_masks[:, y:y + h, x:x + w] = masks
        boxes = sample["gt_bbox"] + np.array([x, y, x, y], np.float32)
        return {**sample, "image": canvas, "gt_segm": out_masks, "gt_bbox": boxes}


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of [N,4] x1,y1,x2,y2 boxes with one box [4]."""
    size = np.clip(np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2]), 0, None)
    inter = size.prod(1)
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (areas + (box[2:] - box[:2]).prod() - inter + 1e-10)


class RandomCrop:
    """SSD-style crop: a region whose IoU with some box passes a random threshold, objects kept
    if their centre is inside it; applied with probability `prob`.

    PaddleDetection clips the old box to the crop; here the box is the cropped mask's own tight
    box (tighter where the crop cuts a non-rectangular object), so boxes and masks stay equal.
    """

    def __init__(self, aspect_ratio: Sequence[float] = (0.5, 2.0),
                 thresholds: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
                 scaling: Sequence[float] = (0.3, 1.0), num_attempts: int = 50,
                 allow_no_crop: bool = True, prob: float = 1.0):
        self.aspect_ratio, self.scaling, self.num_attempts = aspect_ratio, scaling, num_attempts
        self.choices = list(thresholds) + ([None] if allow_no_crop else [])  # None = no crop
        self.prob = prob

    def _find_crop(self, boxes: np.ndarray, h: int, w: int, threshold: float,
                   rng: np.random.Generator) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.num_attempts):
            scale = rng.uniform(*self.scaling)
            low, high = self.aspect_ratio
            aspect = rng.uniform(max(low, scale ** 2), min(high, scale ** -2))
            crop_h, crop_w = int(h * scale / np.sqrt(aspect)), int(w * scale * np.sqrt(aspect))
            y = int(rng.integers(0, max(h - crop_h, 1)))
            x = int(rng.integers(0, max(w - crop_w, 1)))
            crop = np.array([x, y, x + crop_w, y + crop_h], np.float32)
            if _iou(boxes, crop).max() < threshold:
                continue
            inside = ((centers >= crop[:2]) & (centers < crop[2:])).all(1)
            overlap = (np.minimum(boxes[:, 2:], crop[2:]) > np.maximum(boxes[:, :2], crop[:2]))
            keep = np.flatnonzero(inside & overlap.all(1))
            if keep.size:
                return crop.astype(int), keep
        return None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        boxes = sample["gt_bbox"]
        if rng.random() > self.prob or len(boxes) == 0:
            return sample
        h, w = sample["image"].shape[:2]
        for k in rng.permutation(len(self.choices)):
            if self.choices[k] is None:
                return sample
            found = self._find_crop(boxes, h, w, self.choices[k], rng)
            if found is not None:
                return self._crop(sample, *found)
        return sample

    @staticmethod
    def _crop(sample: Sample, crop: np.ndarray, keep: np.ndarray) -> Sample:
        x1, y1, x2, y2 = crop
        masks = np.ascontiguousarray(sample["gt_segm"][keep, y1:y2, x1:x2])
        visible = masks.any((1, 2))
        if not visible.any():
            return sample
        keep, masks = keep[visible], masks[visible]
        return {**sample, "image": np.ascontiguousarray(sample["image"][y1:y2, x1:x2]),
                "gt_segm": masks, "gt_bbox": masks_to_boxes(masks),
                "gt_class": sample["gt_class"][keep]}


class RandomFlip:
    """Mirror image, masks and boxes left-right with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        w = sample["image"].shape[1]
        boxes = sample["gt_bbox"][:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32)
        boxes[:, 0::2] += w  # x1' = w - x2, x2' = w - x1
        return {**sample, "image": np.ascontiguousarray(sample["image"][:, ::-1]),
                "gt_segm": np.ascontiguousarray(sample["gt_segm"][:, :, ::-1]),
                "gt_bbox": boxes}


class Resize:
    """Resize to `target_size` (h, w), aspect ratio not kept (ppdet's keep_ratio=False); masks
    by nearest neighbour, boxes scaled and clipped; multiplies scale_factor by (sy, sx)."""

    def __init__(self, target_size: Sequence[int], interp: int = cv2.INTER_LINEAR):
        self.target_size, self.interp = (int(target_size[0]), int(target_size[1])), interp

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        image = sample["image"]
        out_h, out_w = self.target_size
        sy, sx = out_h / image.shape[0], out_w / image.shape[1]
        # scale factors (fx, fy), not an output size: the exact cv2 call of ppdet's Resize
        resized = cv2.resize(image, None, None, fx=sx, fy=sy, interpolation=self.interp)
        if resized.dtype != np.uint8:  # bicubic/lanczos overshoot on float images (ppdet's too)
            resized = np.clip(resized, 0, 255)
        out = {**sample, "image": resized.astype(np.float32),
               "im_shape": np.array([out_h, out_w], np.float32),
               "scale_factor": sample["scale_factor"] * np.array([sy, sx], np.float32)}
        if "gt_bbox" in sample:
            boxes = sample["gt_bbox"] * np.array([sx, sy, sx, sy], np.float32)
            out["gt_bbox"] = np.clip(boxes, 0, [out_w, out_h, out_w, out_h]).astype(np.float32)
        if "gt_segm" in sample:
            masks = [cv2.resize(m, None, None, fx=sx, fy=sy, interpolation=cv2.INTER_NEAREST)
                     for m in sample["gt_segm"]]
            out["gt_segm"] = np.stack(masks) if masks else np.zeros((0, out_h, out_w), np.uint8)
        return out


class BatchRandomResize:
    """Multi-scale training: one random square size and interpolation for the whole batch."""

    def __init__(self, target_sizes: Sequence[int]):
        self.target_sizes = list(target_sizes)
        if not self.target_sizes or not all(isinstance(s, int) and s > 0 for s in target_sizes):
            raise UserError(f"data.train_sizes must be a non-empty list of positive integers, "
                            f"got {self.target_sizes}")

    def __call__(self, samples: List[Sample], rng: np.random.Generator) -> List[Sample]:
        size = self.target_sizes[rng.integers(len(self.target_sizes))]
        resize = Resize((size, size), INTERPS[rng.integers(len(INTERPS))])
        return [resize(s) for s in samples]


class ForEach:
    """Batch transform that runs sample transforms on every sample (ppdet's batch_transforms)."""

    def __init__(self, *transforms: Callable):
        self.transforms = transforms

    def __call__(self, samples: List[Sample], rng: np.random.Generator) -> List[Sample]:
        return [apply(self.transforms, s, rng) for s in samples]


class NormalizeImage:
    """image * float32(1/255) -> float32 in 0..1 (the reader's mean 0, std 1, is_scale True)."""

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        # multiply by the float32 constant, not divide: bit-exact with ppdet
        return {**sample, "image": sample["image"].astype(np.float32) * np.float32(1 / 255)}


class NormalizeBox:
    """gt_bbox pixels -> fractions of the image width and height."""

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        h, w = sample["image"].shape[:2]
        return {**sample, "gt_bbox": sample["gt_bbox"] / np.array([w, h, w, h], np.float32)}


class BboxXYXY2XYWH:
    """gt_bbox x1,y1,x2,y2 -> cx,cy,w,h (the model's box format)."""

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        boxes = sample["gt_bbox"]
        size = boxes[:, 2:] - boxes[:, :2]
        return {**sample, "gt_bbox": np.concatenate([boxes[:, :2] + size / 2, size], 1)}


class Permute:
    """image [H,W,3] -> [3,H,W]."""

    def __call__(self, sample: Sample, rng: Optional[np.random.Generator] = None) -> Sample:
        return {**sample, "image": sample["image"].transpose(2, 0, 1)}


def apply(transforms: Sequence[Callable], sample: Sample, rng: np.random.Generator) -> Sample:
    """Run sample transforms in order."""
    for transform in transforms:
        sample = transform(sample, rng)
    return sample


def train_transforms(train_sizes: Sequence[int], augment: bool = True
                     ) -> Tuple[List[Callable], List[Callable]]:
    """(sample transforms, batch transforms) of the Mask RT-DETR TrainReader; `augment=False`
    keeps only the flip and the multi-scale resize (short CPU runs learn faster without the
    colour jitter, zoom-out and crops)."""
    sample = [Decode(), Poly2Mask(), RandomDistort(prob=0.8), RandomExpand(fill_value=EXPAND_FILL),
              RandomCrop(prob=0.8), RandomFlip()]
    if not augment:
        sample = [Decode(), Poly2Mask(), RandomFlip()]
    batch = [BatchRandomResize(train_sizes),
             ForEach(NormalizeImage(), NormalizeBox(), BboxXYXY2XYWH(), Permute())]
    return sample, batch


def eval_transforms(eval_size: Sequence[int]) -> List[Callable]:
    """Sample transforms of the EvalReader/TestReader: bicubic resize to eval_size, no padding."""
    return [Decode(), Resize(eval_size, cv2.INTER_CUBIC), NormalizeImage(), Permute()]


# ---------------------------------------------------------------- single images
def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] by `Decode`, upright as a photo viewer shows it (EXIF applied)."""
    return Decode()({"im_file": path})["image"]


def preprocess(image_rgb: np.ndarray, size: Sequence[int]) -> Dict[str, np.ndarray]:
    """RGB uint8 [H0, W0, 3] -> model inputs (batch of 1) at `size` (h, w), as numpy arrays.

    The evaluation data set's own transforms (after decoding), so `mrtdetr infer` sees exactly
    the inputs that `mrtdetr eval` scores.
    """
    h0, w0 = image_rgb.shape[:2]
    sample = {"image": image_rgb, "im_shape": np.array([h0, w0], np.float32),
              "scale_factor": np.ones(2, np.float32)}
    for transform in eval_transforms(size):
        if not isinstance(transform, Decode):
            sample = transform(sample)
    return {k: sample[k][None] for k in ("image", "im_shape", "scale_factor")}
