"""Data set checker: one broken input per rule, each reported with its file and ids."""

import json

import cv2
import numpy as np
import pytest

from mrtdetr_lib.data import mask_to_rle
from mrtdetr_lib.data.check import Problem, check_dataset

H, W = 40, 50
NAN, INF = float("nan"), float("inf")


def good_data():
    square = [5, 5, 25, 5, 25, 25, 5, 25]
    return {"images": [{"id": 1, "file_name": "1.jpg", "width": W, "height": H},
                       {"id": 2, "file_name": "2.png", "width": W, "height": H}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20],
                 "area": 400, "iscrowd": 0, "segmentation": [square]},
                {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10],
                 "area": 100, "iscrowd": 0,
                 "segmentation": mask_to_rle(np.pad(np.ones((10, 10)), ((0, H - 10),
                                                                        (0, W - 10))))}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def run(tmp_path, edit=None, files=None):
    """Write images and a json (after `edit(data)`), check it; returns the problems' texts."""
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for name in ("1.jpg", "2.png"):
        cv2.imwrite(str(tmp_path / name), pixels)
    for name, content in (files or {}).items():
        (tmp_path / name).write_bytes(content) if content is not None else (
            tmp_path / name).unlink()
    data = good_data()
    if edit:
        edit(data)
    (tmp_path / "anno.json").write_text(json.dumps(data))
    report = check_dataset(str(tmp_path / "anno.json"), str(tmp_path), num_threads=2)
    assert report.ok == (not report.problems)
    return [str(p) for p in report.problems]


def only(problems, *fragments):
    """The single problem, which contains every fragment."""
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])
    return problems[0]


def test_good_data_set_is_ok(tmp_path):
    assert run(tmp_path) == []


def test_missing_image(tmp_path):
    only(run(tmp_path, files={"2.png": None}), "2.png: image id 2: image file not found")


def test_corrupt_image(tmp_path):
    only(run(tmp_path, files={"1.jpg": b"garbage"}), "1.jpg: image id 1:", "cannot be decoded")


def test_truncated_image(tmp_path):
    cv2.imwrite(str(tmp_path / "full.jpg"), np.full((H, W, 3), 128, np.uint8))
    cut = (tmp_path / "full.jpg").read_bytes()
    only(run(tmp_path, files={"1.jpg": cut[:len(cut) * 2 // 3]}), "1.jpg", "truncated")


def test_image_size_disagrees_with_json(tmp_path):
    def edit(data):
        data["images"][1]["width"] = 60
    problems = run(tmp_path, edit)
    assert any("2.png: image id 2: image is 50x40 (w x h) but the json says 60x40" in p
               for p in problems), problems


def test_bbox_outside_the_image(tmp_path):
    def edit(data):
        data["annotations"][0]["bbox"] = [30, 5, 30, 20]
    only(run(tmp_path, edit), "anno.json: image id 1, annotation id 10:", "outside the 50x40")


def test_bbox_of_non_positive_size(tmp_path):
    def edit(data):
        data["annotations"][0]["bbox"] = [5, 5, 0, 20]
    only(run(tmp_path, edit), "annotation id 10", "non-positive size")


def test_malformed_bbox(tmp_path):
    def edit(data):
        data["annotations"][0]["bbox"] = [5, 5, 20]
    only(run(tmp_path, edit), "annotation id 10", "is not 4 numbers")


def test_empty_segmentation(tmp_path):
    def edit(data):
        data["annotations"][0]["segmentation"] = []
    only(run(tmp_path, edit), "annotation id 10", "empty segmentation")


def test_polygon_with_fewer_than_three_points(tmp_path):
    def edit(data):
        data["annotations"][0]["segmentation"] = [[5, 5, 25, 25]]
    only(run(tmp_path, edit), "annotation id 10", "2 points, fewer than 3")


def test_polygon_of_zero_area(tmp_path):
    def edit(data):
        data["annotations"][0]["segmentation"] = [[5, 5, 10, 10, 15, 15]]  # on a line
    only(run(tmp_path, edit), "annotation id 10", "zero area")


def test_polygon_with_odd_coordinates(tmp_path):
    def edit(data):
        data["annotations"][0]["segmentation"] = [[5, 5, 25, 5, 25, 25, 5]]
    only(run(tmp_path, edit), "annotation id 10", "odd number of coordinates")


def test_rle_of_the_wrong_size(tmp_path):
    def edit(data):
        data["annotations"][1]["segmentation"] = mask_to_rle(np.ones((10, 10)))
    only(run(tmp_path, edit), "image id 2, annotation id 11", "RLE size [10, 10] differs")


@pytest.mark.parametrize("compressed", [True, False])
def test_rle_of_an_empty_mask(tmp_path, compressed):
    def edit(data):
        data["annotations"][1]["segmentation"] = (
            mask_to_rle(np.zeros((H, W))) if compressed else {"size": [H, W], "counts": [H * W]})
    only(run(tmp_path, edit), "image id 2, annotation id 11", "empty mask (an RLE of 0 pixels)")


def test_uncompressed_rle_of_the_wrong_length(tmp_path):
    def edit(data):
        data["annotations"][1]["segmentation"] = {"size": [H, W], "counts": [5, 10]}
    only(run(tmp_path, edit), "annotation id 11", "covers 15 pixels, the image has 2000")


@pytest.mark.parametrize("index,field,value,message", [
    (0, "bbox", [5, 5, NAN, 20], "bbox[2] is nan, not a finite number"),
    (0, "bbox", [5, 5, 20, INF], "bbox[3] is inf, not a finite number"),  # not also "outside"
    (0, "area", NAN, "area is nan, not a finite number"),
    (0, "area", -INF, "area is -inf, not a finite number"),
    (0, "segmentation", [[5, 5, 25, 5, 25, NAN, 5, NAN]],
     "segmentation[0][5] is nan, not a finite number (and 1 more)"),
    (1, "segmentation", {"size": [H, W], "counts": [100, 3.5, H * W - 103.5]},
     "segmentation.counts[1] is 3.5: uncompressed RLE counts are whole numbers >= 0"),
    (1, "segmentation", {"size": [H, W], "counts": [100, NAN]},
     "segmentation.counts[1] is nan, not a finite number"),
    (1, "segmentation", {"size": [H, W], "counts": [H * W + 4, -4]},
     "segmentation.counts[1] is -4: uncompressed RLE counts are whole numbers >= 0"),
    (1, "segmentation", {"size": [NAN, W], "counts": [H * W]},  # int(nan) used to crash it
     "segmentation.size[0] is nan, not a finite number"),
    (1, "iscrowd", INF, "iscrowd is inf, not a finite number"),  # any field, not only geometry
], ids=["bbox-nan", "bbox-inf", "area-nan", "area-inf", "polygon-nan", "rle-float-count",
        "rle-nan-count", "rle-negative-count", "rle-nan-size", "other-field-inf"])
def test_non_finite_number_names_annotation_and_field(tmp_path, index, field, value, message):
    def edit(data):
        data["annotations"][index][field] = value
    # json.dumps writes NaN/Infinity literals, which json.load reads back as floats
    ids = f"image id {index + 1}, annotation id {10 + index}"
    only(run(tmp_path, edit), f"anno.json: {ids}: {message}")


def test_whole_number_float_rle_counts_are_fine(tmp_path):
    def edit(data):
        data["annotations"][1]["segmentation"] = {"size": [H, W], "counts": [100.0, H * W - 100.0]}
    assert run(tmp_path, edit) == []


def test_missing_segmentation(tmp_path):
    def edit(data):
        del data["annotations"][0]["segmentation"]
    only(run(tmp_path, edit), "annotation id 10", "no segmentation")


def test_unknown_category(tmp_path):
    def edit(data):
        data["annotations"][1]["category_id"] = 99
    only(run(tmp_path, edit), "image id 2, annotation id 11", "unknown category id 99")


def test_annotation_of_an_unknown_image(tmp_path):
    def edit(data):
        data["annotations"][1]["image_id"] = 7
    only(run(tmp_path, edit), "image id 7, annotation id 11", "not in the images")


def test_duplicate_image_ids(tmp_path):
    def edit(data):
        data["images"][1]["id"] = 1
        data["annotations"][1]["image_id"] = 1
    problems = run(tmp_path, edit)
    assert "anno.json: duplicate image id 1" in "\n".join(problems), problems


def test_duplicate_annotation_ids(tmp_path):
    def edit(data):
        data["annotations"][1]["id"] = 10
    only(run(tmp_path, edit), "anno.json: duplicate annotation id 10")


def test_image_entry_missing_fields(tmp_path):
    def edit(data):
        del data["images"][0]["height"]
        data["annotations"] = data["annotations"][1:]
    only(run(tmp_path, edit), "image id 1:", "lacks one of id, file_name, width, height")


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    def edit(data):
        data["annotations"][0]["bbox"] = [5, 5, -1, 20]
        data["annotations"][0]["category_id"] = 5
        data["annotations"][1]["segmentation"] = [[1, 1]]
    problems = run(tmp_path, edit, files={"1.jpg": b"x"})
    assert len(problems) == 4, problems


@pytest.mark.parametrize("content,message", [(None, "annotation file not found"),
                                             ("{not json", "not valid json"),
                                             ('{"images": []}', "no list")])
def test_unreadable_annotation_file(tmp_path, content, message):
    path = tmp_path / "anno.json"
    if content is not None:
        path.write_text(content)
    report = check_dataset(str(path), str(tmp_path))
    assert not report.ok and message in str(report.problems[0])
    assert str(report).endswith("1 problem(s) in 0 images, 0 annotations, 0 categories")


def test_problem_text_names_file_and_ids():
    assert str(Problem("a.json", "bad", 3, 4)) == "a.json: image id 3, annotation id 4: bad"
    assert str(Problem("a.json", "bad")) == "a.json: bad"


def test_category_map_and_num_classes(tmp_path):
    def edit(data):  # ids need not start at 1 or be contiguous: sorted ids -> labels 0..K-1
        data["categories"] = [{"id": 90, "name": "b"}, {"id": 3, "name": "a"}]
        data["annotations"][0]["category_id"], data["annotations"][1]["category_id"] = 3, 90
    run(tmp_path, edit)
    anno = str(tmp_path / "anno.json")
    report = check_dataset(anno, str(tmp_path), num_classes=2)
    assert report.ok and report.category_map == [(3, 0, "a"), (90, 1, "b")]
    assert report.category_table() == "category id 3 -> label 0: a\ncategory id 90 -> label 1: b"
    only([str(p) for p in check_dataset(anno, str(tmp_path), num_classes=1).problems],
         "2 categories but num_classes is 1: labels 1..1 are beyond the model's classes "
         "(set -o num_classes=2)")
    only([str(p) for p in check_dataset(anno, str(tmp_path), num_classes=3).problems],
         "2 categories but num_classes is 3: 1 of the model's classes never occur")


def test_roboflow_export_passes_with_a_note_on_its_project_category(tmp_path):
    """Roboflow's COCO export: its project as category 0 (supercategory "none") that no
    annotation uses, the classes under it, ids from 0, licence and date fields."""
    def edit(data):
        data["info"] = {"description": "Exported from roboflow.com", "version": "1"}
        data["licenses"] = [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/",
                             "name": "CC BY 4.0"}]
        data["categories"] = [{"id": 0, "name": "pets", "supercategory": "none"},
                              {"id": 1, "name": "a", "supercategory": "pets"},
                              {"id": 2, "name": "b", "supercategory": "pets"}]
        for im in data["images"]:
            im.update(license=1, date_captured="2024-05-01T10:00:00+00:00")
    assert run(tmp_path, edit) == []
    report = check_dataset(str(tmp_path / "anno.json"), str(tmp_path), num_classes=2)
    assert report.category_map[0] == (0, 0, "pets")
    assert [str(w) for w in report.warnings] == [
        f"{tmp_path / 'anno.json'}: category id 0 ('pets') has no annotation but still takes "
        "label 0 and a class of the model: it is the others' supercategory, as the project "
        "category 0 of Roboflow's export (delete it from the json, or count it in num_classes)"]
    only([str(p) for p in report.problems], "3 categories but num_classes is 2")


def test_cvat_export_masks_are_crowd_and_boxes_have_no_mask(tmp_path):
    """CVAT's COCO export (datumaro): `attributes` on every annotation, an object drawn as a mask
    written as iscrowd 1 with uncompressed RLE, a rectangle with segmentation []."""
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 10:30] = 1
    flat = mask.ravel(order="F")
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]]))

    def edit(data):
        data["categories"] = [{"id": 1, "name": "a", "supercategory": ""},
                              {"id": 2, "name": "b", "supercategory": ""}]
        for ann in data["annotations"]:
            ann["attributes"] = {"occluded": False}
        data["annotations"][1].update(segmentation={"counts": runs.tolist(), "size": [H, W]},
                                      iscrowd=1, bbox=[10, 5, 20, 10], area=200)
        data["annotations"].append({"id": 12, "image_id": 1, "category_id": 2, "segmentation": [],
                                    "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
                                    "attributes": {"occluded": False}})
    only(run(tmp_path, edit), "annotation id 12: empty segmentation (no polygon): a box without "
         "a mask (CVAT writes [] for rectangles), which training leaves out")
    report = check_dataset(str(tmp_path / "anno.json"), str(tmp_path))
    assert [str(w) for w in report.warnings] == [
        f"{tmp_path / 'anno.json'}: 1 of 3 annotations are crowd regions (iscrowd 1): training "
        "leaves them out of the targets (CVAT's COCO export marks every object drawn as a mask "
        "so; polygons export as iscrowd 0)"]
    assert str(report).endswith("1 problem(s) in 2 images, 3 annotations, 2 categories, "
                                "1 warning(s)")
