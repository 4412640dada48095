"""Threshold explorer: mask probabilities of the detections, the pure filter, the widgets."""

import cv2
import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.course.explorer import (
    PredictionCache,
    collect_predictions,
    draw_predictions,
    enlarge,
    filter_predictions,
    mask_iou,
    match_instances,
    predict_with_probabilities,
    score_sweep,
    threshold_explorer,
    view_image,
)
from mrtdetr_lib.data import preprocess


def test_probabilities_binarise_to_the_models_own_masks():
    paddle.seed(0)
    model = mrt.build_model("tiny", eval_size=(96, 96), num_top_queries=7)
    model.eval()
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    inputs = {k: paddle.to_tensor(v) for k, v in preprocess(rgb, (96, 96)).items()}
    with paddle.no_grad():
        binary, probs = model(inputs), predict_with_probabilities(model, inputs)
    np.testing.assert_array_equal(probs["bbox"].numpy(), binary["bbox"].numpy())
    p = probs["mask"].numpy()
    assert p.dtype == np.float32 and binary["mask"].numpy().dtype == np.int32
    assert p.shape == binary["mask"].shape == (7, 50, 70) and p.min() >= 0 and p.max() <= 1
    assert 0.05 < p.mean() < 0.95  # real probabilities, not 0/1
    mismatch = ((p > 0.5) != binary["mask"].numpy().astype(bool)).mean()
    assert mismatch < 1e-4  # sigmoid(x) > 0.5 <=> x > 0, up to rounding at x ~ 0


def _prediction():
    """Three detections: scores .9 / .6 / .2, labels 0 / 1 / 0, known mask probabilities."""
    probs = np.zeros((3, 4, 4), np.float16)
    probs[0, :2] = 0.8
    probs[0, 2:] = 0.4
    probs[1] = 0.55
    probs[2, 0, 0] = 0.99
    return {"boxes": np.array([[0, 0, 4, 2], [0, 0, 4, 4], [0, 0, 1, 1]], np.float32),
            "scores": np.array([0.9, 0.6, 0.2], np.float32),
            "labels": np.array([0, 1, 0]), "mask_probs": probs}


def test_filter_keeps_scores_classes_and_thresholds_masks():
    pred = _prediction()
    kept = filter_predictions(pred, score_threshold=0.5, mask_threshold=0.5)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert kept["masks"].dtype == bool and kept["masks"][0].sum() == 8
    assert kept["masks"][1].all()
    lower = filter_predictions(pred, score_threshold=0.5, mask_threshold=0.3)
    assert lower["masks"][0].all()  # the 0.4 half joins the mask
    higher = filter_predictions(pred, score_threshold=0.5, mask_threshold=0.6)
    assert not higher["masks"][1].any()
    circles = filter_predictions(pred, score_threshold=0.0, classes=[0])
    assert circles["labels"].tolist() == [0, 0] and circles["scores"].tolist() == pytest.approx(
        [0.9, 0.2])
    assert len(filter_predictions(pred, score_threshold=0.95)["scores"]) == 0
    assert len(filter_predictions(pred, classes=[])["labels"]) == 0
    assert pred["mask_probs"].dtype == np.float16  # the cache is not changed


def _cache():
    image = np.full((4, 4, 3), 128, np.uint8)
    return PredictionCache([image, image], [_prediction(), _prediction()],
                           ["circle", "square"])


def test_draw_predictions_enlarges_and_counts():
    rgb, count = draw_predictions(_cache(), 0, score_threshold=0.5, min_side=32)
    assert rgb.shape == (32, 32, 3) and count == 2
    assert draw_predictions(_cache(), 1, 0.0, classes=[1], min_side=8)[1] == 1
    image, big = enlarge(np.zeros((4, 4, 3), np.uint8), filter_predictions(_prediction()), 10)
    assert image.shape == (12, 12, 3) and big["masks"].shape == (2, 12, 12)  # x3
    assert big["boxes"][0].tolist() == [0, 0, 12, 6] and big["masks"][0, :6].all()
    assert not big["masks"][0, 6:].any()


def test_widgets_redraw_from_the_cache():
    box = threshold_explorer(_cache(), score_threshold=0.5)
    picture, controls = box.children
    image, score, mask, classes, caption = controls.children
    assert caption.value == "2 of 3 detections" and picture.value[:2] == b"\xff\xd8"  # JPEG
    assert picture.value == view_image(_cache(), 0, 0.5, 0.5)  # the static copy of this view
    before = picture.value
    score.value = 0.1
    assert caption.value == "3 of 3 detections" and picture.value != before
    classes.value = (1,)
    assert caption.value == "1 of 3 detections"
    before = picture.value
    mask.value = 0.6  # the square's 0.55 mask disappears
    assert picture.value != before
    image.value = 1
    assert caption.value == "1 of 3 detections"
    second = threshold_explorer(_cache(), score_threshold=0.1, index=1)
    assert second.children[1].children[0].value == 1
    assert second.children[0].value == view_image(_cache(), 1, 0.1, 0.5)


def test_collect_predictions_keeps_every_top_k_detection():
    paddle.seed(0)
    model = mrt.build_model("tiny", eval_size=(96, 96), num_top_queries=7)
    images = [np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8)
              for i in range(2)]
    cache = collect_predictions(model, images, (96, 96), ["a", "b", "c", "d"])
    assert len(cache.images) == 2 and model.training  # handed back in training mode
    pred = cache.predictions[1]
    assert pred["mask_probs"].shape == (7, 50, 70) and pred["mask_probs"].dtype == np.float16
    assert pred["boxes"].shape == (7, 4) and np.all(np.diff(pred["scores"]) <= 0)
    # the cached probabilities at 0.5 give the masks the model itself returns
    model.eval()
    inputs = {k: paddle.to_tensor(v) for k, v in preprocess(images[1], (96, 96)).items()}
    with paddle.no_grad():
        masks = model(inputs)["mask"].numpy().astype(bool)
    kept = filter_predictions(pred, score_threshold=0.0, mask_threshold=0.5)
    # float16 (cache memory) rounds probabilities by <= 2^-11 near 0.5: only pixels that
    # close to the threshold may flip (an untrained model has many of them)
    flipped = kept["masks"] != masks
    assert np.abs(pred["mask_probs"][flipped].astype(np.float32) - 0.5).max(initial=0) <= 1e-3


def test_view_image_is_the_drawing_as_jpeg():
    cache = _cache()
    jpeg = view_image(cache, 0, score_threshold=0.5)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    drawn, _ = draw_predictions(cache, 0, score_threshold=0.5)
    assert decoded.shape == drawn.shape
    assert np.abs(decoded.astype(int) - drawn).mean() < 3  # JPEG: close, not exact
    assert view_image(cache, 0, 0.95) != jpeg  # no detection left: another picture


def _truth():
    """Two objects on 4x4: class 0 the top half, class 1 the whole image."""
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    masks[1] = True
    return {"labels": np.array([0, 1]), "masks": masks}


def test_mask_iou_of_known_masks():
    truth = _truth()["masks"]
    iou = mask_iou(truth, truth)
    np.testing.assert_allclose(iou, [[1, 0.5], [0.5, 1]])
    assert mask_iou(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))[0, 0] == 0


def test_match_instances_is_cocos_greedy_rule():
    kept = filter_predictions(_prediction(), score_threshold=0.0)
    # 0 (class 0, top half): hit; 1 (class 1, whole image): hit; 2 (class 0, one pixel): miss
    assert match_instances(kept, _truth()).tolist() == [True, True, False]
    duplicate = {k: np.concatenate([v[:1], v[:1]]) for k, v in kept.items()}
    duplicate["scores"] = np.array([0.4, 0.9], np.float32)  # the higher score matches first
    assert match_instances(duplicate, _truth()).tolist() == [False, True]
    assert match_instances(kept, _truth(), iou_threshold=1.01).tolist() == [False] * 3
    empty = {"labels": np.zeros(0, int), "masks": np.zeros((0, 4, 4), bool)}
    assert match_instances(kept, empty).tolist() == [False] * 3


def test_score_sweep_counts_precision_and_recall():
    cache = _cache()
    rows = score_sweep(cache, [_truth(), _truth()], [0.0, 0.5, 0.95])
    assert [r["kept"] for r in rows] == [6, 4, 0] and [r["found"] for r in rows] == [4, 4, 0]
    assert rows[0]["objects"] == 4 and rows[0]["precision"] == pytest.approx(4 / 6)
    assert rows[1]["precision"] == 1 and rows[1]["recall"] == 1 and rows[1]["f1"] == 1
    assert np.isnan(rows[2]["precision"]) and rows[2]["recall"] == 0 and rows[2]["f1"] == 0
