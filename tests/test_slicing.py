"""Sliced inference (slicing.py, Predictor.predict_sliced, `mrtdetr infer --slice_infer`).

A fake predictor that reads its objects from the tile's pixels gives exact geometry: an object cut
by tile borders comes out once with its whole mask. The course checkpoint shows the same on a
model, on a mosaic of shapes images.
"""

import json

import numpy as np
import pytest

from mrtdetr_lib.data import segmentation_to_mask
from mrtdetr_lib.data.shapes import render_image
from mrtdetr_lib.errors import UserError
from mrtdetr_lib.infer import Predictor
from mrtdetr_lib.slicing import predict_sliced, slice_windows

SIZE = 160


def scene(*objects):
    """A [SIZE,SIZE,3] image whose channel 0 is the object id (1, 2, ...) and channel 1 its class;
    the ground-truth masks."""
    image, masks = np.zeros((SIZE, SIZE, 3), np.uint8), []
    for k, (label, region) in enumerate(objects, 1):
        mask = np.zeros((SIZE, SIZE), bool)
        mask[region] = True
        image[mask] = (k, label, 0)
        masks.append(mask)
    return image, masks


def fake_predict(tile, calls=None):
    """The objects visible in a tile, as the Predictor returns them; a bigger visible part scores
    higher (as a model is surer of a whole object than of a piece)."""
    if calls is not None:
        calls.append(tile.shape[:2])
    found = {"boxes": [], "scores": [], "labels": [], "masks": []}
    for k in np.unique(tile[..., 0]):
        if k == 0:
            continue
        mask = tile[..., 0] == k
        ys, xs = np.nonzero(mask)
        found["boxes"].append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        found["scores"].append(0.5 + mask.sum() / 1e5)
        found["labels"].append(tile[ys[0], xs[0], 1])
        found["masks"].append(mask)
    return {"boxes": np.array(found["boxes"], np.float32).reshape(-1, 4),
            "scores": np.array(found["scores"], np.float32),
            "labels": np.array(found["labels"], np.int64),
            "masks": np.array(found["masks"], bool).reshape(-1, *tile.shape[:2])}


def test_windows_cover_the_image_with_the_overlap():
    windows = slice_windows(160, 200, (96, 64), (0.5, 0.25))
    assert sorted({y for _, y, _, _ in windows}) == [0, 48, 64]  # step 48, last flush
    assert sorted({x for x, _, _, _ in windows}) == [0, 48, 96, 136]
    assert all(x2 - x1 == 64 and y2 - y1 == 96 for x1, y1, x2, y2 in windows)
    covered = np.zeros((160, 200), int)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert slice_windows(50, 40, (640, 640)) == [(0, 0, 40, 50)]  # smaller than a tile: one
    with pytest.raises(UserError, match="overlap_ratio"):
        slice_windows(50, 40, (32, 32), (1.0, 0.2))


def test_object_cut_by_tile_borders_comes_out_once_whole():
    # a disc across the border x=96 of the first tile, whole in the tile at x 48..144; a square
    # whole in two tiles; a second class
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 80) ** 2 + (xx - 90) ** 2 <= 15 ** 2
    image, masks = scene((3, disc), (1, np.s_[10:20, 100:110]), (2, np.s_[130:150, 5:30]))
    calls = []
    out = predict_sliced(lambda tile: fake_predict(tile, calls), image, (96, 96), (0.5, 0.5))
    assert len(calls) == 9 and set(calls) == {(96, 96)}
    assert sorted(out["labels"].tolist()) == [1, 2, 3]
    for label, mask in zip((3, 1, 2), masks):
        (k,) = np.flatnonzero(out["labels"] == label)
        np.testing.assert_array_equal(out["masks"][k], mask)
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(out["boxes"][k], [xs.min(), ys.min(), xs.max() + 1,
                                                        ys.max() + 1])
    assert (np.diff(out["scores"]) <= 0).all()  # best first
    # concat keeps every tile's copy: the disc (x 75..105, y 65..95) is in all 9 tiles
    concat = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5), "concat")
    assert (concat["labels"] == 3).sum() == 9


def test_nmm_makes_an_object_no_tile_saw_whole_whole():
    image, (bar,) = scene((1, np.s_[70:90, 20:140]))  # 120 wide, tiles 96: no tile holds it
    merged = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5), "nmm")
    assert merged["masks"].shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(merged["masks"][0], bar)
    np.testing.assert_array_equal(merged["boxes"][0], [20, 70, 140, 90])
    kept = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5), "nms")
    assert len(kept["masks"]) == 1 and kept["masks"][0].sum() < bar.sum()  # the best piece
    # with the whole image as well, nms has the whole object to keep
    whole = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5), "nms", whole_image=True)
    np.testing.assert_array_equal(whole["masks"][0], bar)


def test_touching_objects_with_overlapping_boxes_stay_apart():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    square = (yy >= 40) & (yy < 80) & (xx >= 40) & (xx < 80)
    lower, upper = square & (xx - 40 < yy - 40), square & (xx - 40 >= yy - 40)
    image, masks = scene((1, lower), (1, upper))  # one class, the same box, disjoint masks
    out = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5))
    assert len(out["masks"]) == 2
    assert {m.sum() for m in out["masks"]} == {m.sum() for m in masks}
    # IoU does not take a cut piece for its whole object (why ios is the default)
    by_iou = predict_sliced(fake_predict, image, (96, 96), (0.5, 0.5), match_metric="iou")
    assert len(by_iou["masks"]) > 2
    with pytest.raises(UserError, match="combine_method 'mean' is not one of nms, nmm, concat"):
        predict_sliced(fake_predict, image, combine_method="mean")


def best_ious(masks, truth):
    """For each true mask, the IoUs of the predicted masks that overlap it by more than 0.3."""
    return [[iou for iou in ((m & t).sum() / (m | t).sum() for m in masks) if iou > 0.3]
            for t in truth]


def test_course_model_on_a_mosaic_finds_each_shape_once():
    from mrtdetr_lib.course import load_course_model

    model, cfg = load_course_model()
    predictor = Predictor(model, threshold=0.5, image_size=cfg.model.eval_size)
    size = cfg.model.eval_size[0]  # each quarter of the mosaic is one shapes image of this size
    mosaic, truth, alone = np.zeros((2 * size, 2 * size, 3), np.uint8), [], []
    for i, (y, x) in enumerate([(0, 0), (0, size), (size, 0), (size, size)]):
        image, objects = render_image(np.random.default_rng([0, 1, i]), size)
        mosaic[y:y + size, x:x + size] = image
        masks = [segmentation_to_mask(obj["segmentation"], size, size).astype(bool)
                 for obj in objects]
        alone += best_ious(predictor(image)["masks"], masks)  # each quarter on its own
        truth += [np.pad(m, ((y, size - y), (x, size - x))) for m in masks]
    # tiles start at 0, size/2 and size each way: the middle ones cut every quarter's shapes
    out = predictor.predict_sliced(mosaic, (size, size), (0.5, 0.5))
    assert out["masks"].shape[1:] == mosaic.shape[:2]
    sliced = best_ious(out["masks"], truth)
    assert all(len(ious) <= 1 for ious in sliced), sliced  # never a second, partial copy
    whole_alone = [bool(ious) and max(ious) > 0.7 for ious in alone]
    whole_sliced = [bool(ious) and max(ious) > 0.7 for ious in sliced]
    print(f"{sum(whole_sliced)} of {len(truth)} shapes found whole, sliced; "
          f"{sum(whole_alone)} in the quarters alone")
    assert sum(whole_sliced) >= sum(whole_alone) - 1 and sum(whole_sliced) >= len(truth) / 2


def test_infer_cli_slice_flags(tmp_path, capsys):
    import cv2

    from mrtdetr_lib.cli import build_parser, main
    from mrtdetr_lib.course import course_checkpoint, load_course_model

    args = build_parser().parse_args(["infer", "-c", "tiny", "--infer_img", "a.jpg"])
    assert (args.slice_infer, args.slice_size, args.overlap_ratio, args.combine_method,
            args.match_threshold, args.match_metric) == (False, [640, 640], [0.25, 0.25], "nms",
                                                         0.6, "ios")  # ppdet's defaults
    image, _ = render_image(np.random.default_rng([0, 1, 0]), 300)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    weights = course_checkpoint()
    assert main(["infer", "-c", str(weights.parent / "config.yml"), "-o", f"weights={weights}",
                 "--infer_img", str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "out"),
                 "--slice_infer", "--slice_size", "200", "200", "--overlap_ratio", "0.5", "0.5",
                 "--combine_method", "nmm"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    model, cfg = load_course_model()
    wanted = Predictor(model, image_size=cfg.model.eval_size).predict_sliced(
        image, (200, 200), (0.5, 0.5), "nmm")
    assert printed.startswith(f"{tmp_path / 'a.png'}: {len(wanted['scores'])} instances -> ")
    assert (tmp_path / "out" / "a.png").is_file()
    # a bad tile size is the user's mistake: one line, status 2, no traceback
    assert main(["infer", "-c", str(weights.parent / "config.yml"), "-o", f"weights={weights}",
                 "--infer_img", str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "out"),
                 "--slice_infer", "--slice_size", "0", "200"]) == 2
    assert "slice_size [0, 200] must be two sizes >= 1" in capsys.readouterr().err


def test_bench_slicing_prints_a_line_per_method(capsys):
    from conftest import load_script

    assert load_script("bench", "bench_slicing").main(["--images", "1", "--scale", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-3:]]
    assert [r["method"] for r in lines] == ["whole_image", "sliced_nms", "sliced_nmm"]
    assert all(0 <= r["found"] <= r["shapes"] and r["image_size"] == 448 for r in lines)
