"""Sliced inference for small objects: tile the image, predict each tile, merge across borders.

PaddleDetection's `--slice_infer` (tools/infer.py and deploy/python/infer.py, after SAHI, Akyon
et al. 2022): the image is cut into tiles of `slice_size` (h, w) that overlap by `overlap_ratio`,
each tile is predicted like a whole image (resized to the model's eval size, so small objects
reach the model larger), its instances are moved back to the image's pixels, and the copies of
one object found by several tiles are merged. Two instances match when they have one class and
their masks overlap by at least `match_threshold`, measured as `ios` (intersection over the
smaller mask: the piece of an object that a tile border cut off matches the whole object) or
`iou`. ppdet matches boxes; masks keep two touching objects whose boxes overlap apart. Then
`nms` keeps the best-scoring instance of each group of matches, `nmm` (non-maximum merging)
makes the group one instance (union of the masks, box around it, the best score: an object no
tile saw whole comes out whole), and `concat` keeps everything.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from .errors import UserError

Instances = Dict[str, np.ndarray]  # boxes [n,4] xyxy px, scores [n], labels [n], masks [n,H,W]
COMBINE_METHODS, MATCH_METRICS = ("nms", "nmm", "concat"), ("ios", "iou")


def _starts(length: int, size: int, overlap: float) -> List[int]:
    """Tile starts along a side: steps of size * (1 - overlap), the last tile flush with the end."""
    step = max(1, int(size * (1 - overlap)))
    return list(range(0, length - size, step)) + [length - size]


def slice_windows(height: int, width: int, slice_size: Sequence[int] = (640, 640),
                  overlap_ratio: Sequence[float] = (0.25, 0.25)) -> List[Tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) tiles that cover the image, row by row; a side shorter than its tile
    is one tile of the image's length."""
    if len(slice_size) != 2 or min(slice_size) < 1:
        raise UserError(f"slice_size {list(slice_size)} must be two sizes >= 1: H W")
    if len(overlap_ratio) != 2 or not all(0 <= r < 1 for r in overlap_ratio):
        raise UserError(f"overlap_ratio {list(overlap_ratio)} must be two ratios in [0, 1)")
    tile_h, tile_w = min(slice_size[0], height), min(slice_size[1], width)
    return [(x, y, x + tile_w, y + tile_h)
            for y in _starts(height, tile_h, overlap_ratio[0])
            for x in _starts(width, tile_w, overlap_ratio[1])]


class _Piece:
    """One instance in image coordinates, its mask kept as the crop around its pixels."""

    def __init__(self, box: np.ndarray, score: float, label: int, mask: np.ndarray,
                 x0: int, y0: int):
        ys, xs = np.nonzero(mask)
        top, left = (ys.min(), xs.min()) if len(ys) else (0, 0)
        bottom, right = (ys.max() + 1, xs.max() + 1) if len(ys) else (0, 0)
        self.box, self.score, self.label = box + [x0, y0, x0, y0], score, label
        self.crop = mask[top:bottom, left:right]
        self.x0, self.y0, self.area = x0 + left, y0 + top, len(ys)

    def overlap(self, other: "_Piece") -> int:
        """Pixels the two masks share."""
        x1, y1 = max(self.x0, other.x0), max(self.y0, other.y0)
        x2 = min(self.x0 + self.crop.shape[1], other.x0 + other.crop.shape[1])
        y2 = min(self.y0 + self.crop.shape[0], other.y0 + other.crop.shape[0])
        if x2 <= x1 or y2 <= y1:
            return 0
        mine = self.crop[y1 - self.y0:y2 - self.y0, x1 - self.x0:x2 - self.x0]
        theirs = other.crop[y1 - other.y0:y2 - other.y0, x1 - other.x0:x2 - other.x0]
        return int((mine & theirs).sum())

    def paste(self, mask: np.ndarray) -> None:
        """OR this mask into a full-image [H,W] mask."""
        h, w = self.crop.shape
        mask[self.y0:self.y0 + h, self.x0:self.x0 + w] |= self.crop


def _match(a: _Piece, b: _Piece, metric: str) -> float:
    """Mask IoS or IoU of two pieces (boxes' when a mask is empty)."""
    if a.area and b.area:
        inter, areas = a.overlap(b), (a.area, b.area)
    else:  # an empty mask still has a box: ppdet's box overlap
        size = np.clip(np.minimum(a.box[2:], b.box[2:]) - np.maximum(a.box[:2], b.box[:2]), 0,
                       None)
        inter = float(size[0] * size[1])
        areas = tuple(float(np.prod(np.clip(p.box[2:] - p.box[:2], 0, None))) for p in (a, b))
    denominator = min(areas) if metric == "ios" else sum(areas) - inter
    return inter / denominator if denominator > 0 else 0.0


def group_matches(pieces: Sequence[_Piece], match_threshold: float, match_metric: str
                  ) -> List[List[int]]:
    """Greedy groups, best score first: each unclaimed piece claims the unclaimed pieces of its
    class that match it by match_threshold or more (ppdet's test)."""
    order = sorted(range(len(pieces)), key=lambda i: -pieces[i].score)
    claimed, groups = set(), []
    for i in order:
        if i in claimed:
            continue
        group = [i] + [j for j in order if j not in claimed and j != i
                       and pieces[j].label == pieces[i].label
                       and _match(pieces[i], pieces[j], match_metric) >= match_threshold]
        claimed.update(group)
        groups.append(group)
    return groups


def _instances(pieces: Sequence[_Piece], groups: Sequence[Sequence[int]], merge: bool,
               height: int, width: int) -> Instances:
    """The groups as the Predictor's output: the head of each, or (merge) their union."""
    masks = np.zeros((len(groups), height, width), bool)
    boxes = np.zeros((len(groups), 4), np.float32)
    for k, group in enumerate(groups):
        members = [pieces[i] for i in (group if merge else group[:1])]
        for piece in members:
            piece.paste(masks[k])
        stacked = np.stack([p.box for p in members])
        boxes[k] = np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])
    heads = [pieces[group[0]] for group in groups]
    return {"boxes": boxes, "scores": np.array([p.score for p in heads], np.float32),
            "labels": np.array([p.label for p in heads], np.int64), "masks": masks}


def predict_sliced(predict: Callable[[np.ndarray], Instances], image: np.ndarray,
                   slice_size: Sequence[int] = (640, 640),
                   overlap_ratio: Sequence[float] = (0.25, 0.25), combine_method: str = "nms",
                   match_threshold: float = 0.6, match_metric: str = "ios",
                   whole_image: bool = False) -> Instances:
    """Instances of an RGB image [H,W,3] from its tiles (and the whole image if whole_image).

    `predict(rgb)` returns one image's instances (a Predictor); the result has the same keys, in
    image pixels, best score first.
    """
    if combine_method not in COMBINE_METHODS:
        raise UserError(f"combine_method {combine_method!r} is not one of "
                        f"{', '.join(COMBINE_METHODS)}")
    if match_metric not in MATCH_METRICS:
        raise UserError(f"match_metric {match_metric!r} is not one of {', '.join(MATCH_METRICS)}")
    height, width = image.shape[:2]
    windows = slice_windows(height, width, slice_size, overlap_ratio)
    windows += [(0, 0, width, height)] if whole_image and windows != [(0, 0, width, height)] else []
    pieces = []
    for x1, y1, x2, y2 in windows:
        found = predict(np.ascontiguousarray(image[y1:y2, x1:x2]))
        pieces += [_Piece(box.astype(np.float32), float(score), int(label), mask.astype(bool),
                          x1, y1)
                   for box, score, label, mask in zip(found["boxes"], found["scores"],
                                                      found["labels"], found["masks"])]
    if combine_method == "concat":
        groups = [[i] for i in sorted(range(len(pieces)), key=lambda i: -pieces[i].score)]
    else:
        groups = group_matches(pieces, match_threshold, match_metric)
    return _instances(pieces, groups, combine_method == "nmm", height, width)
