"""course/walkthrough.py: the step-by-step forward equals the model's; counts match manifests."""

import json

import numpy as np
import paddle
import pytest
from conftest import reference_dir

from mrtdetr_lib.course.walkthrough import (
    boxes_to_pixels,
    draw_boxes,
    format_parameter_table,
    forward_intermediates,
    heatmap,
    manifest_shapes,
    masks_to_pixels,
    match_to_truth,
    model_shapes,
    parameter_table,
)
from mrtdetr_lib.model import build_model


def _tiny_and_inputs(batch: int = 2, **overrides):
    paddle.seed(0)
    model = build_model("tiny", **overrides)
    model.eval()
    inputs = {"image": paddle.rand([batch, 3, 256, 256]),
              "im_shape": paddle.full([batch, 2], 256.0),
              "scale_factor": paddle.to_tensor([[0.5, 0.5], [1.0, 2.0]][:batch], "float32")}
    return model, inputs


@pytest.mark.parametrize("batch", [1, 2])
def test_intermediates_end_in_the_models_output(batch):
    model, inputs = _tiny_and_inputs(batch)
    steps = forward_intermediates(model, inputs)
    with paddle.no_grad():
        expected = model(inputs)
    for key in ("bbox", "bbox_num", "mask"):
        np.testing.assert_array_equal(steps["output"][key].numpy(), expected[key].numpy())
    assert not model.training


def test_intermediate_shapes_and_relations():
    model, inputs = _tiny_and_inputs(2)
    tr = model.transformer
    steps = forward_intermediates(model, inputs)
    assert [f.shape[2:] for f in steps["backbone"]] == [[64, 64], [32, 32], [16, 16], [8, 8]]
    assert [f.shape for f in steps["neck"]] == [[2, 64, s, s] for s in (32, 16, 8)]
    assert steps["aifi_in"].shape == steps["aifi_out"].shape == [2, 8 * 8, 64]
    assert steps["mask_feat"].shape == [2, 16, 64, 64]
    num_tokens = 32 * 32 + 16 * 16 + 8 * 8
    assert steps["token_scores"].shape == [2, num_tokens]
    assert steps["topk_index"].shape == [2, tr.num_queries]
    # the selected queries are the best-scoring tokens, and their boxes are those tokens' boxes
    scores = steps["token_scores"].numpy()
    chosen = np.take_along_axis(scores, steps["topk_index"].numpy(), 1)
    assert np.all(chosen.min(1) >= np.sort(scores, 1)[:, -tr.num_queries])
    np.testing.assert_allclose(
        steps["enc_boxes"].numpy(),
        np.take_along_axis(steps["token_boxes"].numpy(), steps["topk_index"].numpy()[..., None],
                           1), rtol=0, atol=0)
    assert len(steps["dec_boxes"]) == len(steps["dec_logits"]) == len(tr.decoder.layers)
    assert steps["ref_boxes"].shape == steps["dec_boxes"][-1].shape == [2, tr.num_queries, 4]
    # the hooks are gone afterwards, and training mode is restored
    assert not model.neck.encoder[0]._forward_pre_hooks
    assert not model.neck.encoder[0]._forward_post_hooks
    model.train()
    forward_intermediates(model, inputs)
    assert model.training


def test_no_mask_enhancement_starts_from_the_proposal_boxes():
    model, inputs = _tiny_and_inputs(1, mask_enhanced=False)
    steps = forward_intermediates(model, inputs)
    np.testing.assert_array_equal(steps["ref_boxes"].numpy(), steps["enc_boxes"].numpy())


def test_bad_manifest_names_the_file(tmp_path):
    path = tmp_path / "manifest_Q.json"
    path.write_text(json.dumps({"arch": "Q"}))
    with pytest.raises(ValueError, match="manifest_Q.json"):
        manifest_shapes(path)


def test_table_without_reference_folder(tmp_path):
    rows = parameter_table(["tiny"], reference_dir=tmp_path)
    assert rows[0]["manifest"] is None and rows[0]["same_keys"] is None
    assert rows[0]["model"]["total"] == sum(
        int(np.prod(s)) for s in model_shapes(build_model("tiny")).values())
    assert "no manifest found" in format_parameter_table(rows)


def test_table_matches_manifest_s():
    folder = reference_dir()
    if not (folder / "manifest_S.json").is_file():
        pytest.skip(f"manifest_S.json not found in {folder} (set MRTDETR_REFERENCE_DIR)")
    (row,) = parameter_table(["s"], reference_dir=folder)
    assert row["same_keys"] is True
    assert row["model"] == row["manifest"]
    manifest = json.loads((folder / "manifest_S.json").read_text())
    assert row["manifest"]["total"] == manifest["total_numel"]
    assert "equal" in format_parameter_table([row])


def test_display_helpers():
    image = heatmap(np.arange(6, dtype=np.float32).reshape(2, 3), (4, 6))
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert (image[:2, :2] == image[0, 0]).all()  # nearest: one cell = a 2x2 block
    assert heatmap(np.zeros((2, 2)), (2, 2)).shape == (2, 2, 3)  # a flat map is no error
    np.testing.assert_allclose(boxes_to_pixels([[0.5, 0.5, 0.2, 0.4]], (100, 200)),
                               [[80, 30, 120, 70]])
    logits = np.full((1, 4, 4), -5.0, np.float32)
    logits[0, :2, :2] = 5.0
    pixels = masks_to_pixels(logits, (8, 8))
    assert pixels.shape == (1, 8, 8) and pixels[0, :3, :3].all() and not pixels[0, 5:, 5:].any()
    assert masks_to_pixels(np.zeros((0, 4, 4)), (8, 8)).shape == (0, 8, 8)
    canvas = draw_boxes(np.zeros((10, 10, 3), np.uint8), [[2, 2, 8, 8]], colour=(255, 0, 0))
    assert canvas[2, 2].tolist() == [255, 0, 0] and canvas[5, 5].tolist() == [0, 0, 0]


def test_match_to_truth_finds_objects_by_label_and_mask_iou():
    square = np.zeros((3, 10, 10), bool)
    square[0, :5, :5] = True  # object 0: label 1
    square[1, 5:, 5:] = True  # object 1: label 2
    square[2, :5, 5:] = True  # object 2: label 1, missed
    truth = {"labels": np.array([1, 2, 1]), "masks": square}
    det = np.zeros((3, 10, 10), bool)
    det[0, :5, :4] = True  # IoU 0.8 with object 0
    det[1, 5:, 5:] = True  # the right place, the wrong label
    det[2, :5, :5] = True  # a duplicate of object 0: used once only
    rows = match_to_truth({"labels": np.array([1, 3, 1]), "masks": det}, truth)
    assert [r["found"] for r in rows] == [True, False, False]
    assert rows[0]["iou"] == 1.0  # the better of the two detections of label 1
    assert rows[2]["iou"] == 0.0  # the 0.8 one cannot be reused for object 2 (no overlap)
