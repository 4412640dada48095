"""Denoising groups: shapes, attention mask, noise bounds, and ppdet's random-call order."""

import json

import numpy as np
import paddle
import pytest

from mrtdetr_lib.model.box_ops import inverse_sigmoid
from mrtdetr_lib.model.denoising import denoising_attn_mask, get_denoising_training_group


def _targets(counts, seed=0):
    rng = np.random.default_rng(seed)
    return {"gt_class": [paddle.to_tensor(rng.integers(0, 5, (n, 1)).astype("int32"))
                         for n in counts],
            "gt_bbox": [paddle.to_tensor(rng.uniform(0.2, 0.6, (n, 4)).astype("float32"))
                        for n in counts]}


def _loop_mask(max_gt: int, num_group: int, num_queries: int) -> np.ndarray:
    """PaddleDetection's construction, slice by slice (True = blocked), inverted."""
    num_dn = max_gt * num_group
    blocked = np.zeros([num_dn + num_queries] * 2, bool)
    blocked[num_dn:, :num_dn] = True
    for i in range(num_group):
        rows = slice(max_gt * i, max_gt * (i + 1))
        blocked[rows, max_gt * (i + 1):num_dn] = True
        blocked[rows, :max_gt * i] = True
    return ~blocked


@pytest.mark.parametrize("max_gt, num_group", [(3, 4), (1, 1), (2, 1), (5, 2)])
def test_attn_mask_equals_paddledetection_loops(max_gt, num_group):
    np.testing.assert_array_equal(denoising_attn_mask(max_gt, num_group, 6).numpy(),
                                  _loop_mask(max_gt, num_group, 6))


def test_shapes_meta_and_padding():
    paddle.seed(0)
    embed = paddle.randn([5, 8])
    queries, boxes_unact, attn_mask, meta = get_denoising_training_group(
        _targets([2, 0, 3]), 5, 7, embed, num_denoising=10)
    assert meta["dn_num_group"] == 3 and meta["dn_num_split"] == [9, 7]  # 10 // max_gt 3
    assert queries.shape == [3, 9, 8] and boxes_unact.shape == [3, 9, 4]
    assert attn_mask.shape == [16, 16] and attn_mask.dtype == paddle.bool
    assert [p.tolist() for p in meta["dn_positive_idx"]] == [[0, 1, 3, 4, 6, 7], [],
                                                            [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    # padding slots: the all-zero 'no object' embedding and the box logit of box 0
    np.testing.assert_array_equal(queries[0, 2::3].numpy(), 0)
    np.testing.assert_array_equal(queries[1].numpy(), 0)
    np.testing.assert_allclose(boxes_unact[1].numpy(), np.log(1e-5), rtol=1e-6)


def test_noise_bounds_and_labels():
    paddle.seed(1)
    targets = _targets([4, 2])
    embed = paddle.randn([5, 8])
    queries, boxes_unact, _, meta = get_denoising_training_group(
        targets, 5, 7, embed, num_denoising=40, label_noise_ratio=0.5, box_noise_scale=1.0)
    boxes = paddle.nn.functional.sigmoid(boxes_unact).numpy()  # [2, 40, 4]
    for i, gt in enumerate(targets["gt_bbox"]):
        gt = np.tile(gt.numpy(), (10, 1))
        real = meta["dn_positive_idx"][i].numpy()
        shift = np.abs(boxes[i, real] - gt)
        bound = np.concatenate([gt[:, 2:] * 0.5, gt[:, 2:]], -1)  # cxcy by <= wh/2, wh by <= wh
        assert (shift <= bound + 1e-5).all()
        assert shift.max() > 0  # and they do move
        # every real query's content is some class embedding; most keep their own label
        labels = np.tile(targets["gt_class"][i].numpy()[:, 0], 10)
        same = np.isclose(queries[i, real].numpy(), embed.numpy()[labels]).all(-1)
        assert 0.5 < same.mean() < 1.0


def test_no_denoising_gives_nones():
    embed = paddle.randn([5, 8])
    assert get_denoising_training_group(_targets([2]), 5, 7, embed, 0) == (None,) * 4
    assert get_denoising_training_group(_targets([0, 0]), 5, 7, embed, 10) == (None,) * 4


def test_no_box_noise_still_returns_logits():
    targets = _targets([2])
    _, boxes_unact, _, _ = get_denoising_training_group(targets, 5, 7, paddle.randn([5, 8]),
                                                        num_denoising=2, box_noise_scale=0.0)
    np.testing.assert_allclose(boxes_unact[0].numpy(),
                               inverse_sigmoid(targets["gt_bbox"][0]).numpy(), atol=1e-6)


def test_random_calls_follow_paddledetection(ref_dir, refweights, monkeypatch):
    """With the loss fixture's injected RNG the calls match its log: rand([99]),
    randint_like of the 23 chosen labels in [0, 80), rand([1, 99, 4])."""
    log = json.loads((ref_dir / "loss_L_000000014439_640.json").read_text())
    gt = log["gt"]
    calls = []

    def rand(shape, *args, **kwargs):
        calls.append({"fn": "rand", "shape": list(shape)})
        return paddle.to_tensor(refweights.reference_rand(len(calls) - 1, shape))

    def randint_like(x, low=0, high=None, dtype=None, name=None):
        calls.append({"fn": "randint_like", "shape": list(x.shape), "low": low, "high": high})
        draw = refweights.reference_rand(len(calls) - 1, x.shape)
        return paddle.to_tensor(low + np.floor(draw * (high - low)).astype("int64")).astype(
            dtype or x.dtype)

    monkeypatch.setattr(paddle, "rand", rand)
    monkeypatch.setattr(paddle, "randint_like", randint_like)
    targets = {"gt_class": [paddle.to_tensor(np.array(gt["gt_class"], "int32"))],
               "gt_bbox": [paddle.to_tensor(np.array(gt["gt_bbox_cxcywh_norm"], "float32"))]}
    get_denoising_training_group(targets, 80, 300, paddle.randn([80, 256]), 100, 0.5, 1.0)
    expected = [{k: c[k] for k in ("fn", "shape", "low", "high") if k in c}
                for c in log["D_dn100_injected_rng"]["rng_calls"][:3]]
    assert calls == expected
