"""Box geometry: format round trips, (G)IoU invariances (as DETR's test_all.py), mask -> box."""

import numpy as np
import paddle
import pytest

from mrtdetr_lib.model.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    mask_to_box_coordinate,
)


def _random_xyxy(n: int, seed: int) -> paddle.Tensor:
    """n valid xyxy boxes in 0..1 (x2 > x1, y2 > y1)."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 0.7, (n, 2))
    size = rng.uniform(0.05, 0.3, (n, 2))
    return paddle.to_tensor(np.concatenate([corner, corner + size], 1).astype("float32"))


def _numpy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes [N, 4] x [M, 4] -> [N, M], written out in numpy."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.prod(np.clip(rb - lt, 0, None), -1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], -1), np.prod(b[:, 2:] - b[:, :2], -1)
    return overlap / (area_a[:, None] + area_b[None] - overlap)


# ---------------------------------------------------------------- formats
def test_box_formats_round_trip():
    boxes_xyxy = _random_xyxy(50, seed=0)
    again = box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes_xyxy))
    np.testing.assert_allclose(again.numpy(), boxes_xyxy.numpy(), atol=1e-6)
    boxes = box_xyxy_to_cxcywh(boxes_xyxy)
    np.testing.assert_allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)).numpy(),
                               boxes.numpy(), atol=1e-6)


def test_box_formats_known_values_and_leading_axes():
    boxes = paddle.to_tensor([[[0.5, 0.5, 0.2, 0.4]]] * 3)  # [3, 1, 4]
    boxes_xyxy = box_cxcywh_to_xyxy(boxes)
    assert boxes_xyxy.shape == [3, 1, 4]
    np.testing.assert_allclose(boxes_xyxy.numpy()[0, 0], [0.4, 0.3, 0.6, 0.7], atol=1e-7)


def test_inverse_sigmoid_inverts_sigmoid_and_clips():
    x = paddle.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(paddle.nn.functional.sigmoid(inverse_sigmoid(x)).numpy(),
                               x.numpy(), rtol=1e-5)
    ends = inverse_sigmoid(paddle.to_tensor([-1.0, 0.0, 1.0, 2.0])).numpy()
    np.testing.assert_allclose(ends, [np.log(1e-5), np.log(1e-5), -np.log(1e-5), -np.log(1e-5)],
                               rtol=1e-6)  # finite at and beyond 0 and 1


# ---------------------------------------------------------------- IoU and GIoU
def test_iou_broadcasts_to_the_numpy_pairwise_iou():
    a, b = _random_xyxy(7, seed=1), _random_xyxy(5, seed=2)
    ours = box_iou(a.unsqueeze(1), b.unsqueeze(0)).squeeze(-1).numpy()  # [7, 1, 4] x [1, 5, 4]
    np.testing.assert_allclose(ours, _numpy_iou(a.numpy(), b.numpy()), rtol=1e-5, atol=1e-7)
    assert ours.min() >= 0 and ours.max() <= 1


def test_iou_of_a_box_with_itself_is_one_and_disjoint_is_zero():
    boxes = _random_xyxy(20, seed=3)
    np.testing.assert_allclose(box_iou(boxes, boxes).numpy(), 1.0, rtol=1e-6)
    shifted = boxes + paddle.to_tensor([2.0, 0.0, 2.0, 0.0])
    np.testing.assert_array_equal(box_iou(boxes, shifted).numpy(), 0.0)


def test_iou_counts_an_inverted_box_as_empty():
    box = paddle.to_tensor([[0.0, 0.0, 1.0, 1.0]])
    inverted = paddle.to_tensor([[0.6, 0.6, 0.4, 0.4]])  # x2 < x1: area counts 0, not negative
    np.testing.assert_array_equal(box_iou(box, inverted).numpy(), 0.0)


def test_giou_of_a_box_with_itself_is_one():
    boxes = _random_xyxy(20, seed=4)
    np.testing.assert_allclose(generalized_box_iou(boxes, boxes).numpy(), 1.0, rtol=1e-6)


def test_giou_is_symmetric_and_in_minus_one_to_one():
    a, b = _random_xyxy(200, seed=5), _random_xyxy(200, seed=6)
    giou = generalized_box_iou(a, b).numpy()
    np.testing.assert_array_equal(giou, generalized_box_iou(b, a).numpy())
    assert giou.min() >= -1 and giou.max() <= 1
    assert giou.min() < 0 < giou.max()  # the random pairs include both disjoint and overlapping


def test_giou_is_scale_and_translation_invariant():
    a, b = _random_xyxy(50, seed=7), _random_xyxy(50, seed=8)
    giou = generalized_box_iou(a, b).numpy()
    for scale in (0.5, 10.0, 640.0):
        np.testing.assert_allclose(generalized_box_iou(a * scale, b * scale).numpy(), giou,
                                   atol=2e-5, err_msg=f"scale {scale}")
    shift = paddle.to_tensor([3.0, -2.0, 3.0, -2.0])
    np.testing.assert_allclose(generalized_box_iou(a + shift, b + shift).numpy(), giou, atol=2e-5)


def test_giou_equals_iou_when_one_box_contains_the_other():
    outer = _random_xyxy(30, seed=9)
    # A box inside `outer`: shrink towards its centre, so the enclosing box is `outer` itself.
    center = (outer[:, :2] + outer[:, 2:]) / 2
    inner = paddle.concat([center + 0.4 * (outer[:, :2] - center),
                           center + 0.7 * (outer[:, 2:] - center)], axis=-1)
    np.testing.assert_allclose(generalized_box_iou(inner, outer).numpy(),
                               box_iou(inner, outer).numpy(), atol=1e-6)


def test_giou_of_disjoint_boxes_is_negative_and_tends_to_minus_one():
    box = paddle.to_tensor([[0.0, 0.0, 1.0, 1.0]])
    near = generalized_box_iou(box, paddle.to_tensor([[2.0, 0.0, 3.0, 1.0]])).item()
    far = generalized_box_iou(box, paddle.to_tensor([[1e3, 1e3, 1e3 + 1, 1e3 + 1]])).item()
    assert near == pytest.approx(2 / 3 - 1, abs=1e-6)  # union 2, enclosing 3 x 1, IoU 0
    assert -1 < far < -0.999


# ---------------------------------------------------------------- mask -> box
def _fixture_masks(ref_dir):
    fixtures = np.load(ref_dir / "unit_fixtures.npz")
    shape = fixtures["m2b_masks_shape"]
    masks = np.unpackbits(fixtures["m2b_masks_packbits"])[:np.prod(shape)].reshape(shape)
    return paddle.to_tensor(masks.astype(bool)[None]), fixtures  # [1, 12, 160, 160]


def test_mask_to_box_equals_reference_on_its_edge_cases(ref_dir):
    masks, fixtures = _fixture_masks(ref_dir)
    np.testing.assert_array_equal(mask_to_box_coordinate(masks).numpy()[0],
                                  fixtures["m2b_box_xyxy_pixels"])
    np.testing.assert_allclose(mask_to_box_coordinate(masks, normalize=True, format="xywh")
                               .numpy()[0], fixtures["m2b_box_xywh_norm"], rtol=1e-6, atol=1e-7)


def test_mask_to_box_empty_mask_and_one_pixel():
    masks = np.zeros([1, 3, 8, 10], bool)  # mask 0 stays empty
    masks[0, 1, 0, 0] = True  # one pixel in the corner
    masks[0, 2, 7, 9] = True  # one pixel in the opposite corner
    boxes = mask_to_box_coordinate(paddle.to_tensor(masks)).numpy()[0]
    np.testing.assert_array_equal(boxes, [[0, 0, 0, 0], [0, 0, 1, 1], [9, 7, 10, 8]])
    boxes = mask_to_box_coordinate(paddle.to_tensor(masks), normalize=True, format="xywh")
    np.testing.assert_allclose(boxes.numpy()[0, 2], [9.5 / 10, 7.5 / 8, 1 / 10, 1 / 8], rtol=1e-6)


def test_mask_to_box_is_tight_around_two_blobs():
    masks = np.zeros([1, 1, 20, 20], bool)
    masks[0, 0, 2:5, 3:6] = True
    masks[0, 0, 10:12, 14:18] = True
    boxes = mask_to_box_coordinate(paddle.to_tensor(masks)).numpy()[0, 0]
    np.testing.assert_array_equal(boxes, [3, 2, 18, 12])


def test_mask_to_box_of_logits_equals_the_box_of_their_threshold():
    """Logits go max-then-threshold; the boxes must be those of `logits > 0`, empty masks,
    single pixels and exact zeros (not inside) included."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal([2, 6, 16, 12]).astype("float32") - 1.5
    logits[0, 0] = -1.0  # empty
    logits[0, 1] = 0.0  # all exactly 0: empty too (a pixel is in where > 0)
    logits[0, 2] = -1.0
    logits[0, 2, 5, 7] = 1e-30  # one tiny positive pixel
    logits = paddle.to_tensor(logits)
    for kwargs in ({}, {"normalize": True, "format": "xywh"}):
        np.testing.assert_array_equal(mask_to_box_coordinate(logits, **kwargs).numpy(),
                                      mask_to_box_coordinate(logits > 0, **kwargs).numpy())
    np.testing.assert_array_equal(mask_to_box_coordinate(logits).numpy()[0, :3],
                                  [[0, 0, 0, 0], [0, 0, 0, 0], [7, 5, 8, 6]])
