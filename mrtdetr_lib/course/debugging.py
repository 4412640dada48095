"""Three reasons a model does not learn, made on purpose (chapter 03), and the mark each leaves.

* a learning rate far too high: the loss climbs instead of falling and AP collapses;
* class ids off by one (a converter that numbers categories from 1 where the data starts at 0,
  or the reverse): the masks are right and AP is near 0 all the same. COCOeval scored without
  classes (`useCats=0`) gives the AP back, which points at the labels, not the masks;
* empty masks (a tool that exports a mask of zeros): the mask terms fall fast towards 0 and
  both APs with them, the box AP too: the varifocal loss trains every score towards the mask
  IoU, 0 against an empty mask. `check_dataset` names every such annotation.
"""

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import paddle
from pycocotools.coco import COCO

from ..config import Config
from ..data import LoaderWithErrors, mask_to_rle
from ..engine import Trainer
from ..engine.evaluator import COCOEvaluator, eval_mode
from ..files import atomic_write

PathLike = Union[str, Path]


def shifted_categories(coco: COCO, shift: int = 1) -> COCO:
    """A copy of a COCO ground truth whose annotations' category ids move `shift` places along
    the sorted ids, wrapping round: the off-by-one bug of a converter, on valid ids."""
    ids = sorted(coco.getCatIds())
    moved = {cid: ids[(k + shift) % len(ids)] for k, cid in enumerate(ids)}
    data = copy.deepcopy(coco.dataset)
    for ann in data["annotations"]:
        ann["category_id"] = moved[ann["category_id"]]
    shifted = COCO()
    shifted.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints
        shifted.createIndex()
    return shifted


def _ap(evaluator: COCOEvaluator, key: str, use_cats: bool) -> float:
    """COCO AP (0.5:0.95) of the evaluator's `key` results, with or without the classes."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = evaluator.coco_eval(key)
        coco_eval.params.useCats = int(use_cats)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(coco_eval.stats[0])


def ap_with_shifted_labels(model: Any, dataset: Any) -> Dict[str, Dict[str, float]]:
    """{"true labels" | "labels off by one" | "off by one, classes ignored": {mask_AP, bbox_AP}}
    of one set of predictions on `dataset` (one with `coco` and `cat_ids`)."""
    evaluator = COCOEvaluator(dataset.coco, dataset.cat_ids)
    loader = LoaderWithErrors(dataset, paddle.io.BatchSampler(dataset, batch_size=1))
    with eval_mode(model), paddle.no_grad():
        for batch in loader:
            evaluator.update(batch["im_id"], model(batch))
    shifted = COCOEvaluator(shifted_categories(dataset.coco), dataset.cat_ids)
    shifted.results, shifted.image_ids = evaluator.results, evaluator.image_ids
    rows = {"true labels": (evaluator, True), "labels off by one": (shifted, True),
            "off by one, classes ignored": (shifted, False)}
    return {name: {f"{key}_AP": _ap(ev, key, use_cats) for key in ("mask", "bbox")}
            for name, (ev, use_cats) in rows.items()}


def write_empty_masks(src_dir: PathLike, dst_dir: PathLike) -> Path:
    """A copy of a shapes-style data set (instances_{train,val}.json, train/, val/) whose
    training masks are all empty RLEs (boxes kept); the image folders are linked, not copied."""
    src, dst = Path(src_dir).resolve(), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        link = dst / split
        if not link.exists():
            os.symlink(src / split, link, target_is_directory=True)
    data = json.loads((src / "instances_train.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for ann in data["annotations"]:
        height, width = sizes[ann["image_id"]]
        ann["segmentation"] = mask_to_rle(np.zeros((height, width), np.uint8))
    atomic_write(dst / "instances_train.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(data)))
    val = (src / "instances_val.json").read_text()
    atomic_write(dst / "instances_val.json", lambda tmp: Path(tmp).write_text(val))
    return dst


def short_run(cfg: Config, eval_data: Any) -> Dict[str, Any]:
    """Train `cfg` (no evaluation during the run), then score it on `eval_data`:
    {"log": the training records, **summary}. The Trainer's own warnings print as they come."""
    trainer = Trainer(cfg, progress=False)
    log: List[Dict[str, Any]] = [r for r in trainer.run() if r["kind"] == "train"]
    return {"log": log, **trainer.evaluate(eval_data)}


def plot_runs(runs: Dict[str, Dict[str, Any]], axes: Any = None) -> Any:
    """The total loss and the mask terms (loss_mask + loss_dice, last layer) of several
    `short_run`s at every step, one line per run; returns the axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    for name, run in runs.items():
        steps = [r["step"] for r in run["log"]]
        axes[0].plot(steps, [r["loss"] for r in run["log"]], lw=1, label=name)
        axes[1].plot(steps, [r["loss_mask"] + r["loss_dice"] for r in run["log"]], lw=1,
                     label=name)
    axes[0].set(xlabel="step", ylabel="loss (all terms)", yscale="log")
    axes[1].set(xlabel="step", ylabel="loss_mask + loss_dice", yscale="log")
    axes[0].legend()
    return axes
