"""Drawing data samples: draw_instances / draw_sample put masks and boxes where they belong."""

import numpy as np

from mrtdetr_lib.course.figures import draw_sample
from mrtdetr_lib.viz import PALETTE, draw_instances


def _sample():
    image = np.full((60, 80, 3), 200, np.uint8)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 35:55, 50:75] = 1
    boxes = np.array([[10, 10, 40, 30], [50, 35, 75, 55]], np.float32)
    return {"image": image, "gt_segm": masks, "gt_bbox": boxes,
            "gt_class": np.array([[0], [2]], np.int32)}


def test_draw_instances_tints_masks_and_leaves_the_input_alone():
    sample = _sample()
    before = sample["image"].copy()
    out = draw_instances(sample["image"], {"boxes": sample["gt_bbox"], "labels": [0, 2],
                                           "masks": sample["gt_segm"], "scores": [0.9, 0.5]},
                         class_names=["a", "b", "c"])
    np.testing.assert_array_equal(sample["image"], before)
    assert out.shape == before.shape and out.dtype == np.uint8
    tint = (200 * 0.55 + PALETTE[0] * 0.45).astype(np.uint8)
    np.testing.assert_array_equal(out[20, 25], tint)  # inside mask 0, away from the edges
    np.testing.assert_array_equal(out[5, 75], before[5, 75])  # background untouched
    assert (out[45, 50] != before[45, 50]).any()  # box 1's left edge is drawn


def test_draw_sample_reads_normalised_chw_samples_like_pixel_ones():
    sample = _sample()
    pixel = draw_sample(sample)
    h, w = 60, 80
    boxes = sample["gt_bbox"]
    normalised = {**sample, "image": sample["image"].transpose(2, 0, 1).astype(np.float32) / 255,
                  "gt_bbox": np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2,
                                             boxes[:, 2:] - boxes[:, :2]], 1) / [w, h, w, h]}
    np.testing.assert_array_equal(draw_sample(normalised, normalized=True), pixel)
