"""Chapter 03's bugs made on purpose: labels off by one, empty masks, and what shows them."""

import dataclasses
import json

import pytest

from mrtdetr_lib.course import course_checkpoint, load_course_model
from mrtdetr_lib.course.debugging import (
    ap_with_shifted_labels,
    shifted_categories,
    write_empty_masks,
)
from mrtdetr_lib.course.weights import ROOT
from mrtdetr_lib.data import build_dataset, load_coco
from mrtdetr_lib.data.check import check_dataset

SHAPES = ROOT / "dataset" / "shapes"
needs_shapes = pytest.mark.skipif(not (SHAPES / "instances_val.json").is_file(),
                                  reason="dataset/shapes missing: make shapes")


@needs_shapes
def test_shifted_categories_move_every_id_one_place_round():
    coco = load_coco(str(SHAPES / "instances_val.json"))
    ids = sorted(coco.getCatIds())
    shifted = shifted_categories(coco)
    for ann in coco.dataset["annotations"][:50]:
        moved = shifted.anns[ann["id"]]["category_id"]
        assert moved == ids[(ids.index(ann["category_id"]) + 1) % len(ids)]
    assert coco.dataset["annotations"][0]["category_id"] in ids  # the original is untouched
    assert len(shifted.getAnnIds()) == len(coco.getAnnIds())


@needs_shapes
def test_empty_masks_copy_is_flagged_on_every_training_annotation(tmp_path):
    out = write_empty_masks(SHAPES, tmp_path / "empty")
    data = json.loads((out / "instances_train.json").read_text())
    report = check_dataset(str(out / "instances_train.json"), str(out / "train"),
                           check_images=False)
    assert len(report.problems) == len(data["annotations"]) > 0
    assert all("empty mask" in p.message for p in report.problems)
    assert (out / "instances_val.json").read_text() == (SHAPES / "instances_val.json").read_text()
    assert check_dataset(str(out / "instances_val.json"), str(out / "val")).ok


@needs_shapes
def test_labels_off_by_one_cost_the_ap_and_class_agnostic_scoring_gives_it_back():
    model, cfg = load_course_model(course_checkpoint())
    data = dataclasses.replace(cfg.data, dataset_dir=str(SHAPES), max_images=12)
    rows = ap_with_shifted_labels(model, build_dataset(data, "val", cfg.model.eval_size))
    true, shifted = rows["true labels"], rows["labels off by one"]
    agnostic = rows["off by one, classes ignored"]
    for key in ("mask_AP", "bbox_AP"):
        assert true[key] > 0.4 and shifted[key] < 0.1 * true[key], rows
        assert agnostic[key] > 0.8 * true[key], rows
