"""COCO evaluation: results json (RLE, category ids), AP values checked by hand, predictor entry."""

import json

import numpy as np
import paddle
import pycocotools.mask as mask_util
import pytest

from mrtdetr_lib.course.figures import plot_pr_curves
from mrtdetr_lib.course.tables import format_table, per_class_table
from mrtdetr_lib.engine.evaluator import (
    COCOEvaluator,
    eval_mode,
    evaluate_predictor,
    summary,
    to_coco_results,
)

H, W = 40, 60
# Two images; the data set's category ids are not contiguous (3 = "circle", 7 = "square").
OBJECTS = {1: [(3, (5, 5, 20, 15)), (7, (30, 10, 55, 35))],
           2: [(3, (10, 20, 30, 38)), (3, (40, 2, 58, 20))]}


def _mask(box_xyxy):
    m = np.zeros((H, W), np.int32)
    x1, y1, x2, y2 = box_xyxy
    m[y1:y2, x1:x2] = 1
    return m


@pytest.fixture()
def gt_file(tmp_path):
    images = [{"id": i, "width": W, "height": H, "file_name": f"{i}.png"} for i in OBJECTS]
    annotations = []
    for im_id, objects in OBJECTS.items():
        for cat, (x1, y1, x2, y2) in objects:
            rle = mask_util.encode(np.asfortranarray(_mask((x1, y1, x2, y2)), np.uint8))
            annotations.append({"id": len(annotations) + 1, "image_id": im_id,
                                "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0,
                                "segmentation": {"size": [H, W],
                                                 "counts": rle["counts"].decode()}})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]}))
    return str(path)


def _outputs(objects, score=0.9, shift=0):
    """Model-style eval outputs for one image: labels are contiguous (0 = cat 3, 1 = cat 7)."""
    label = {3: 0, 7: 1}
    boxes = [[label[c], score - 0.01 * i, x1 + shift, y1, x2 + shift, y2]
             for i, (c, (x1, y1, x2, y2)) in enumerate(objects)]
    masks = [_mask((x1 + shift, y1, x2 + shift, y2)) for _, (x1, y1, x2, y2) in objects]
    return {"bbox": np.asarray(boxes, np.float32), "bbox_num": np.asarray([len(boxes)]),
            "mask": np.stack(masks)}


def test_results_json_maps_categories_and_encodes_rle():
    res = to_coco_results(_outputs(OBJECTS[1]), [1], cat_ids=[3, 7])
    assert [r["category_id"] for r in res["bbox"]] == [3, 7]
    assert res["bbox"][0]["bbox"] == [5.0, 5.0, 15.0, 10.0]  # x, y, w, h
    rle = dict(res["mask"][1]["segmentation"])
    assert isinstance(rle["counts"], str)  # json-serialisable
    rle["counts"] = rle["counts"].encode()
    np.testing.assert_array_equal(mask_util.decode(rle), _mask((30, 10, 55, 35)))
    json.dumps(res)


def test_perfect_predictions_give_ap_one(gt_file, tmp_path):
    ev = COCOEvaluator(gt_file, cat_ids=[3, 7])
    for im_id, objects in OBJECTS.items():
        ev.update(np.array([[im_id]]), _outputs(objects))
    metrics = ev.accumulate()
    flat = summary(metrics)
    assert flat["bbox_AP"] == pytest.approx(1.0) and flat["mask_AP"] == pytest.approx(1.0)
    assert metrics["mask"]["per_class_ap"] == {"circle": pytest.approx(1.0),
                                               "square": pytest.approx(1.0)}
    assert metrics["bbox"]["precision"].shape == (10, 101, 2)  # [iou, recall, class]
    paths = ev.save(str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["bbox.json", "mask.json"]
    assert len(json.load(open(paths[1]))) == 4


def _one_circle_shifted(gt_file, shift: int) -> dict:
    """accumulate() of exact detections, except image 2's lower-scored circle moved by `shift`
    px (its higher-scored one stays right)."""
    ev = COCOEvaluator(gt_file, cat_ids=[3, 7])
    ev.update([1], _outputs(OBJECTS[1]))
    good, moved = _outputs(OBJECTS[2][:1], score=0.95), _outputs(OBJECTS[2][1:], shift=shift)
    both = {k: np.concatenate([good[k], moved[k]]) for k in ("bbox", "mask")}
    ev.update([2], {**both, "bbox_num": np.array([2])})
    return ev.accumulate()


def test_half_recall_has_hand_computed_ap(gt_file):
    # Image 1 exact; image 2: the higher-scored circle is right, the other is 30 px off (IoU 0).
    result = _one_circle_shifted(gt_file, shift=-30)["mask"]
    # circle: 3 gts, the 2 highest-scored detections right -> precision 1 up to recall 2/3,
    # i.e. 67 of the 101 recall points (0, .01, ..., .66) -> AP = 67/101 at every IoU.
    assert result["per_class_ap"]["circle"] == pytest.approx(67 / 101)
    assert result["per_class_ap"]["square"] == pytest.approx(1.0)
    assert result["stats"][0] == pytest.approx((67 / 101 + 1) / 2)


def test_only_the_evaluated_images_are_scored(gt_file):
    ev = COCOEvaluator(gt_file)
    ev.update([2], _outputs(OBJECTS[2]))  # image 1 (a circle and a square) is not evaluated
    result = ev.accumulate()["bbox"]
    assert result["stats"][0] == pytest.approx(1.0)
    assert np.isnan(result["per_class_ap"]["square"])  # no square among the scored images


def test_no_detections_is_zero_not_an_error(gt_file):
    ev = COCOEvaluator(gt_file)
    empty = {"bbox": np.zeros((0, 6), np.float32), "bbox_num": np.array([0]),
             "mask": np.zeros((0, H, W), np.int32)}
    ev.update([1], empty)
    assert summary(ev.accumulate())["mask_AP"] == 0.0


def test_predictor_entry_point_and_pr_plot(gt_file):
    import matplotlib
    matplotlib.use("Agg")
    batches = [{"im_id": np.array([[i]]), "image": np.zeros((1, 3, H, W), np.float32)}
               for i in OBJECTS]
    seen = []

    def predict(batch):  # stands in for an exported model: batch -> eval outputs
        seen.append(int(batch["im_id"][0, 0]))
        return _outputs(OBJECTS[seen[-1]])

    metrics = evaluate_predictor(predict, batches, gt_file, progress=False)
    assert seen == [1, 2] and summary(metrics)["bbox_AP50"] == pytest.approx(1.0)
    ax = plot_pr_curves(metrics["mask"], iou=0.75)
    assert len(ax.lines) == 2


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOEvaluator(str(tmp_path / "nope.json"))


def test_per_class_table_matches_hand_computed_ap(gt_file):
    # As test_half_recall_has_hand_computed_ap, but the wrong circle overlaps its target with
    # IoU 0.6 (18 x 18 box shifted by 4 px: 14*18 / (2*18*18 - 14*18) = 0.64): right at
    # IoU 0.50..0.60, wrong from 0.65 on.
    metrics = _one_circle_shifted(gt_file, shift=-4)
    rows = per_class_table(metrics)
    circle, square = rows
    assert circle["class"] == "circle" and square["mask_AP75"] == pytest.approx(1.0)
    assert circle["mask_AP50"] == pytest.approx(1.0)  # IoU 0.64 counts at 0.5
    assert circle["mask_AP75"] == pytest.approx(67 / 101)  # not at 0.75: recall stops at 2/3
    assert circle["mask_AP"] == pytest.approx((3 * 1.0 + 7 * 67 / 101) / 10)  # 0.50,0.55,0.60
    assert circle["mask_AP"] == pytest.approx(metrics["mask"]["per_class_ap"]["circle"])
    assert list(circle) == ["class", "bbox_AP", "bbox_AP50", "bbox_AP75", "mask_AP",
                            "mask_AP50", "mask_AP75"]
    text = format_table(rows).splitlines()
    assert text[0].split() == list(circle) and text[1].split()[:2] == ["circle", "0.764"]
    assert len({len(line) for line in text}) == 1  # aligned columns


def test_eval_mode_restores_the_mode_the_model_had():
    model = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.Dropout(0.5))
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("a failing block still hands the model back in training mode")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model in eval mode stays there
