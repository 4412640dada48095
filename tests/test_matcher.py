"""HungarianMatcher: DETR-style invariances on toy inputs (batched == single, permutations)."""

import numpy as np
import paddle
import pytest

from mrtdetr_lib.course.training import cost_matrices
from mrtdetr_lib.loss.matcher import HungarianMatcher


def _predictions(batch=2, queries=12, classes=5, size=16, seed=0):
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0.2, 0.6, (batch, queries, 4)).astype("float32")
    logits = rng.normal(0, 2, (batch, queries, classes)).astype("float32")
    masks = rng.normal(0, 3, (batch, queries, size, size)).astype("float32")
    return paddle.to_tensor(boxes), paddle.to_tensor(logits), paddle.to_tensor(masks)


def _targets(counts, size=32, seed=1, classes=5):
    rng = np.random.default_rng(seed)
    cls = [paddle.to_tensor(rng.integers(0, classes, (n, 1)).astype("int32")) for n in counts]
    box = [paddle.to_tensor(rng.uniform(0.2, 0.6, (n, 4)).astype("float32")) for n in counts]
    mask = [paddle.to_tensor((rng.random((n, size, size)) > 0.5).astype("float32"))
            for n in counts]
    return box, cls, mask


def _as_lists(indices):
    return [(a.numpy().tolist(), b.numpy().tolist()) for a, b in indices]


@pytest.fixture
def fixed_rand(monkeypatch):
    """The same mask points for every call (the matcher draws them with paddle.rand)."""
    rng = np.random.default_rng(7)
    points = rng.random((1, 1, 64, 2)).astype("float32")
    monkeypatch.setattr(paddle, "rand", lambda shape, *a, **k: paddle.to_tensor(
        np.broadcast_to(points, shape).copy()))


def test_one_to_one_and_complete(fixed_rand):
    boxes, logits, masks = _predictions()
    indices = HungarianMatcher(num_sample_points=64)(boxes, logits, masks, *_targets([3, 5]))
    for (queries, gts), n in zip(_as_lists(indices), [3, 5]):
        assert sorted(gts) == list(range(n)) and len(set(queries)) == n


def test_batched_equals_per_image(fixed_rand):
    boxes, logits, masks = _predictions()
    gt_box, gt_cls, gt_mask = _targets([3, 5])
    matcher = HungarianMatcher(num_sample_points=64)
    batched = _as_lists(matcher(boxes, logits, masks, gt_box, gt_cls, gt_mask))
    for i in range(2):
        single = matcher(boxes[i:i + 1], logits[i:i + 1], masks[i:i + 1], gt_box[i:i + 1],
                         gt_cls[i:i + 1], gt_mask[i:i + 1])
        assert _as_lists(single)[0] == batched[i]


def test_permuting_queries_permutes_the_match(fixed_rand):
    boxes, logits, masks = _predictions(batch=1)
    targets = _targets([4])
    matcher = HungarianMatcher(num_sample_points=64)
    (q, g), = _as_lists(matcher(boxes, logits, masks, *targets))
    perm = np.random.default_rng(3).permutation(boxes.shape[1])
    (q2, g2), = _as_lists(matcher(boxes[:, perm], logits[:, perm], masks[:, perm], *targets))
    assert dict(zip(g, q)) == {gt: int(perm[query]) for query, gt in zip(q2, g2)}


def test_perfect_prediction_is_matched_to_itself(fixed_rand):
    gt_box, gt_cls, gt_mask = _targets([3], size=16)
    boxes, logits, masks = _predictions(batch=1, queries=6, size=16)
    boxes, logits, masks = boxes.numpy(), logits.numpy(), masks.numpy()
    for k, query in enumerate([4, 0, 2]):  # put gt k, exactly, at query `query`
        boxes[0, query] = gt_box[0][k].numpy()
        logits[0, query] = -10
        logits[0, query, int(gt_cls[0].numpy()[k, 0])] = 10
        masks[0, query] = np.where(gt_mask[0][k].numpy() > 0, 20.0, -20.0)
    indices = HungarianMatcher(num_sample_points=64)(
        paddle.to_tensor(boxes), paddle.to_tensor(logits), paddle.to_tensor(masks),
        gt_box, gt_cls, gt_mask)
    queries, gts = _as_lists(indices)[0]
    assert dict(zip(gts, queries)) == {0: 4, 1: 0, 2: 2}


def test_images_without_objects():
    boxes, logits, masks = _predictions()
    matcher = HungarianMatcher(num_sample_points=64)
    assert _as_lists(matcher(boxes, logits, masks, *_targets([0, 0]))) == [([], []), ([], [])]
    indices = _as_lists(matcher(boxes, logits, masks, *_targets([0, 2])))
    assert indices[0] == ([], []) and sorted(indices[1][1]) == [0, 1]


def test_cost_matrices_show_what_forward_decides(fixed_rand):
    boxes, logits, masks = _predictions()
    targets = _targets([3, 0])
    matcher = HungarianMatcher(num_sample_points=64)
    shown = cost_matrices(matcher, boxes, logits, masks, *targets)
    indices = _as_lists(matcher(boxes, logits, masks, *targets))
    assert [c["total"].shape for c in shown] == [(12, 3), (12, 0)]
    for costs, (queries, gts) in zip(shown, indices):
        assert (costs["query"].tolist(), costs["gt"].tolist()) == (queries, gts)
        parts = sum(costs[k] for k in ("class", "bbox", "giou", "mask", "dice"))
        np.testing.assert_allclose(costs["total"], parts, rtol=1e-5, atol=1e-5)
    # the weights are applied: bbox is 5 x the mean absolute coordinate difference summed
    l1 = np.abs(boxes.numpy()[0][:, None] - targets[0][0].numpy()[None]).sum(-1)
    np.testing.assert_allclose(shown[0]["bbox"], 5 * l1, rtol=1e-5)
