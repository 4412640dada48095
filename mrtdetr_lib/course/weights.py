"""The course's trained weights: the shipped course checkpoint, or your own full run.

`course_checkpoint()` is `tiny` trained from scratch on the shapes data set on 2 CPU cores, in
two stages (`RECIPE`: 128-192 px, then 160-256 px; `make checkpoint` retrains it), shipped with
the library as package data: `tiny_shapes_course.safetensors`, beside it the `config.yml` of its
last stage, the `train_log.jsonl` of both, `curves.png` and `meta.json` (command, seed, steps,
mask/box AP).

Chapters 02-06 call `course_weights()`: the shipped checkpoint in quick mode (so committed
outputs are the same on every machine), your own full run of chapter 03 otherwise. A missing
full run is an error that says how to make one, never a silent fallback.
"""

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import paddle

from ..config import Config, load_config, quick_mode, save_config
from ..data import build_dataset
from ..data.shapes import make_shapes
from ..engine import Trainer
from ..engine.evaluator import evaluate, summary
from ..engine.log import Record, read_log, save_curves, write_log
from ..files import atomic_write
from ..model.detr import build_model
from ..weights import COURSE_CHECKPOINT, load_pretrained, save_safetensors

PathLike = Union[str, Path]
ROOT = Path(__file__).resolve().parents[2]  # the project folder (an editable install)
SHIPPED = COURSE_CHECKPOINT.parent  # package data; the core knows its path ("course")
WEIGHTS_NAME = COURSE_CHECKPOINT.name
FULL_RUN = ROOT / "output" / "03_training_hires" / "best_model.safetensors"  # chapter 03, full
# The test (and meta.json) score the first images of the validation split: the quick data set's
# val split is exactly these (image i depends only on the seed, the split and i).
TEST_IMAGES = 50
# `make checkpoint`: the configs it trains, in order (each starts from the one before); the last
# one's best_model ships. Stage 2 fine-tunes stage 1 at higher resolution (README).
RECIPE = ("configs/tiny_shapes_course.yml", "configs/tiny_shapes_course_hires.yml")
# chapter 03's live run continues the 10-minute recipe from this early snapshot (`ship_early`),
# where its AP climbs fastest
EARLY = SHIPPED / "early" / "model.safetensors"
EARLY_RECIPE = "configs/tiny_shapes_10min.yml"


def course_checkpoint() -> Path:
    """Path of the shipped course checkpoint (a .safetensors file, config.yml beside it)."""
    path = SHIPPED / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"the course checkpoint is missing: {path} (a broken install? "
                                "`make checkpoint` trains it again)")
    return path


def course_weights(weights: Optional[PathLike] = None) -> Tuple[Path, str]:
    """(path, description) of the weights a chapter uses: `weights` if given, else the shipped
    checkpoint in quick mode, else chapter 03's full run (an error when it is missing)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        if Path(weights).resolve() == course_checkpoint().resolve():
            return Path(weights), "the shipped course checkpoint"
        return Path(weights), f"your weights {weights}"
    if quick_mode():
        return course_checkpoint(), "the shipped course checkpoint (quick mode)"
    if not FULL_RUN.is_file():
        raise FileNotFoundError(
            f"full mode reads chapter 03's full run, {FULL_RUN}, which does not exist yet: run "
            "notebooks/03_training.ipynb with QUICK = 0 first, or pass "
            "weights=course_checkpoint() to use the shipped checkpoint")
    return FULL_RUN, f"chapter 03's full run {FULL_RUN}"


def checkpoint_config(weights: PathLike) -> Config:
    """The Config a checkpoint was trained with: the `config.yml` beside it."""
    path = Path(weights).parent / "config.yml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yml next to {weights}: pass the Config it was "
                                "trained with yourself (e.g. get_config('tiny'))")
    cfg = load_config(str(path))
    data_dir = cfg.data.dataset_dir
    if not os.path.isabs(data_dir) and not os.path.isdir(data_dir) and (ROOT / data_dir).is_dir():
        cfg.data.dataset_dir = str(ROOT / data_dir)  # `mrtdetr train` ran in the project folder
    return cfg


def load_course_model(weights: Optional[PathLike] = None) -> Tuple[paddle.nn.Layer, Config]:
    """The model of `course_weights(weights)` with its weights loaded, in eval mode, and its
    Config; prints which weights it uses."""
    path, what = course_weights(weights)
    cfg = checkpoint_config(path)
    model = build_model(cfg.model)
    load_pretrained(model, str(path))
    model.eval()
    print(f"weights: {what}")
    return model, cfg


def score(model: paddle.nn.Layer, cfg: Config, dataset_dir: PathLike,
          max_images: Optional[int] = None) -> Dict[str, float]:
    """COCO AP (mask_AP, bbox_AP, ...) on the first `max_images` of a shapes val split."""
    data_cfg = dataclasses.replace(cfg.data, dataset_dir=str(dataset_dir), max_images=max_images)
    data = build_dataset(data_cfg, "val", cfg.model.eval_size)
    return summary(evaluate(model, data, progress=False))


def logged_steps(records: Sequence[Record], every: int) -> List[Record]:
    """What a shipped log keeps: the train records of every `every`-th step (the steps the
    trainer printed) and every other record (the evaluations): a smaller file, same curves."""
    return [r for r in records if r["kind"] != "train" or r["step"] % every == 0]


def ship(configs: Sequence[PathLike] = RECIPE, out_dir: PathLike = SHIPPED) -> Dict[str, object]:
    """Package the finished runs of `configs` (the stages of one recipe, in order) as the course
    checkpoint: the last stage's best_model as safetensors and its config, one log of every
    stage (steps counted on, each record tagged with its `stage`), the curves, and meta.json
    with the AP the shipped file reaches on the validation split."""
    cfgs = [load_config(str(ROOT / c)) for c in configs]
    runs = [ROOT / c.train.output_dir for c in cfgs]
    for config, run in zip(configs, runs):
        if not (run / "best_model.safetensors").is_file():
            raise FileNotFoundError(f"{config} has no finished run: {run}/best_model.safetensors "
                                    "is missing (train every stage first: make checkpoint)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(atomic_write(out_dir / WEIGHTS_NAME, lambda tmp: shutil.copyfile(
        runs[-1] / "best_model.safetensors", tmp)))
    weights.chmod(0o644)  # safetensors writes 0600; the package is read by everyone
    save_config(cfgs[-1], str(out_dir / "config.yml"))
    kept, offset = [], 0
    for stage, (cfg, run) in enumerate(zip(cfgs, runs), 1):
        records = read_log(str(run / "train_log.jsonl"))
        kept += [{**r, "step": r["step"] + offset, "stage": stage}
                 for r in logged_steps(records, cfg.train.log_iter)]
        offset += max(r["step"] for r in records)
    write_log(out_dir / "train_log.jsonl", kept)
    save_curves(str(out_dir / "train_log.jsonl"), str(out_dir / "curves.png"),
                smooth=cfgs[-1].train.log_iter)
    model, cfg = load_course_model(weights)
    data_dir = cfg.data.dataset_dir  # load_course_model read the same config.yml
    meta = {"configs": [str(c) for c in configs], "seed": cfg.train.seed,
            "command": "make checkpoint", "steps": offset, "threads": 2,
            "val": {k: round(v, 4) for k, v in score(model, cfg, data_dir).items()},
            f"val_first_{TEST_IMAGES}": {k: round(v, 4) for k, v in
                                         score(model, cfg, data_dir, TEST_IMAGES).items()}}
    meta_text = json.dumps(meta, indent=1) + "\n"
    atomic_write(out_dir / "meta.json", lambda tmp: Path(tmp).write_text(meta_text))
    return meta


def ship_early(steps: int = 450, dataset_dir: PathLike = ROOT / "dataset" / "shapes_1000",
               out_dir: PathLike = EARLY.parent,
               run_dir: PathLike = ROOT / "output" / "early_snapshot") -> Dict[str, object]:
    """Train the 10-minute recipe from scratch in one process (batch 8: what its 2 processes of
    4 make) and stop at `steps`; ship the EMA weights there, the config and the log, and return
    meta.json (steps, minutes, the AP on the first val images). `make early-snapshot`."""
    make_shapes(str(dataset_dir), num_train=1000, num_val=100, progress=False)  # no-op if there
    cfg = load_config(str(ROOT / EARLY_RECIPE))
    cfg.data.batch_size *= 2
    cfg.data.dataset_dir, cfg.train.eval = str(dataset_dir), False
    cfg.train.output_dir = str(run_dir)
    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)
    trainer, start = Trainer(cfg), time.time()
    for _ in trainer.run():
        if trainer.global_step >= steps:
            break  # closing the run saves last.pdckpt
    minutes = (time.time() - start) / 60
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors(trainer.weights(), out_dir / EARLY.name)
    weights.chmod(0o644)
    write_log(out_dir / "train_log.jsonl", logged_steps(
        read_log(str(Path(cfg.train.output_dir) / "train_log.jsonl")), cfg.train.log_iter))
    for part, field in ((cfg.data, "dataset_dir"), (cfg.train, "output_dir")):
        path = Path(getattr(part, field))  # saved relative to the project when inside it
        if path.is_absolute() and path.is_relative_to(ROOT):
            setattr(part, field, str(path.relative_to(ROOT)))
    save_config(cfg, str(out_dir / "config.yml"))
    model, _ = load_course_model(weights)
    meta = {"config": EARLY_RECIPE, "processes": 1, "batch_size": cfg.data.batch_size,
            "steps": trainer.global_step, "seed": cfg.train.seed, "minutes": round(minutes, 1),
            "command": "make early-snapshot", f"val_first_{TEST_IMAGES}": {
                k: round(v, 4) for k, v in score(model, cfg, dataset_dir, TEST_IMAGES).items()}}
    meta_text = json.dumps(meta, indent=1) + "\n"
    atomic_write(out_dir / "meta.json", lambda tmp: Path(tmp).write_text(meta_text))
    return meta


if __name__ == "__main__":  # make checkpoint (after training every stage), make early-snapshot
    import sys
    print(json.dumps(ship_early() if sys.argv[1:] == ["early"] else ship(), indent=1))
