"""The shipped course checkpoint: it loads, reaches the AP it was shipped with, fails clearly on
a damaged or foreign file; chapters pick it in quick mode and a full run otherwise."""

import json
import os
import shutil

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

import mrtdetr_lib as mrt
from mrtdetr_lib.course import weights as course
from mrtdetr_lib.course.weights import (
    TEST_IMAGES,
    checkpoint_config,
    course_checkpoint,
    course_weights,
    load_course_model,
    score,
)
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.engine import read_log
from mrtdetr_lib.weights import WeightsMismatchError, read_state_dict, save_safetensors

# Evaluation is deterministic, but another thread count or CPU kind rounds sums differently:
# a detection near a threshold may flip. 0.02 AP on 50 images is a couple of such flips.
MARGIN = 0.02


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    """The first TEST_IMAGES images of the shapes validation split (the same images in any
    build of the data set: image i depends only on the seed, the split and i)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=1, num_val=TEST_IMAGES, progress=False)
    return root


def test_course_checkpoint_reaches_the_ap_it_was_shipped_with(val_dir):
    meta = json.loads((course_checkpoint().parent / "meta.json").read_text())
    shipped = meta[f"val_first_{TEST_IMAGES}"]
    model, cfg = load_course_model(course_checkpoint())
    got = score(model, cfg, val_dir, TEST_IMAGES)
    assert got["mask_AP"] >= shipped["mask_AP"] - MARGIN, (got, shipped)
    assert got["bbox_AP"] >= shipped["bbox_AP"] - MARGIN, (got, shipped)


def test_course_checkpoint_is_the_tiny_model_with_its_config():
    cfg = checkpoint_config(course_checkpoint())
    assert cfg.model.arch == "T" and cfg.train.lr_schedule == "cosine"
    ours = {k: v.shape for k, v in mrt.build_model(cfg.model).state_dict().items()}
    tiny = {k: v.shape for k, v in mrt.build_model("tiny").state_dict().items()}
    assert ours == tiny
    meta = json.loads((course_checkpoint().parent / "meta.json").read_text())
    assert meta["configs"] == list(course.RECIPE) and meta["seed"] == cfg.train.seed
    stage1 = mrt.load_config(str(course.ROOT / course.RECIPE[0]))  # stage 2 starts where it ended
    # the shipped run read stage 1's .pdparams; the Trainer now writes .safetensors
    assert os.path.splitext(cfg.train.pretrain_weights)[0] == os.path.join(
        stage1.train.output_dir, "best_model")


def test_damaged_or_foreign_file_fails_clearly(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(course_checkpoint().parent, folder)
    path = folder / course_checkpoint().name
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(IOError, match="cannot read weights file .*truncated"):
        load_course_model(path)
    paddle.seed(0)  # a foreign file: the weights of another model (7 classes)
    state = {k: v.numpy() for k, v in mrt.build_model("tiny", num_classes=7).state_dict().items()}
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    with pytest.raises(WeightsMismatchError, match="(?s)does not fit the model.*score_head"):
        load_course_model(path)


def test_quick_mode_uses_the_shipped_checkpoint_full_mode_its_own_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MRTDETR_QUICK", "1")
    assert course_weights()[0] == course_checkpoint()
    monkeypatch.setenv("MRTDETR_QUICK", "0")
    monkeypatch.setattr(course, "FULL_RUN", tmp_path / "03_training" / "best_model.pdparams")
    with pytest.raises(FileNotFoundError, match="QUICK = 0 first"):
        course_weights()  # loud, not a silent fallback to the shipped file
    course.FULL_RUN.parent.mkdir()
    course.FULL_RUN.write_bytes(b"")
    assert course_weights() == (course.FULL_RUN, f"chapter 03's full run {course.FULL_RUN}")
    given = tmp_path / "mine.pdparams"
    with pytest.raises(FileNotFoundError, match="mine.pdparams"):
        course_weights(given)
    given.write_bytes(b"")
    assert course_weights(given) == (given, f"your weights {given}")
    # the shipped file, passed by its path, is still named as the shipped file
    assert course_weights(course_checkpoint())[1] == "the shipped course checkpoint"


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yml next to"):
        checkpoint_config(tmp_path / "w.pdparams")


def test_relative_data_folder_is_found_in_the_project(tmp_path, monkeypatch):
    """A run's config.yml says `dataset/shapes`, relative to where `mrtdetr train` ran."""
    (tmp_path / "project" / "dataset" / "shapes").mkdir(parents=True)
    run = tmp_path / "project" / "output"
    run.mkdir()
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir = "dataset/shapes"
    mrt.save_config(cfg, str(run / "config.yml"))
    monkeypatch.setattr(course, "ROOT", tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    got = checkpoint_config(run / "best_model.pdparams").data.dataset_dir
    assert got == str(tmp_path / "project" / "dataset" / "shapes")


def test_ship_packages_the_last_stage_with_one_log_of_every_stage(tmp_path, monkeypatch):
    """`make checkpoint`'s last step on two stand-in runs: the last stage's weights and config
    ship; the log counts steps on across stages and tags each record with its stage."""
    monkeypatch.setattr(course, "ROOT", tmp_path)
    make_shapes(str(tmp_path / "data"), num_train=1, num_val=3, progress=False)
    configs = []
    for stage, steps in ((1, 4), (2, 2)):
        cfg = mrt.get_config("tiny")
        cfg.data.dataset_dir = str(tmp_path / "data")
        cfg.model.eval_size = (96 + 32 * stage,) * 2
        cfg.train.output_dir, cfg.train.log_iter = f"run{stage}", 2
        mrt.save_config(cfg, str(tmp_path / f"stage{stage}.yml"))
        configs.append(f"stage{stage}.yml")
        run = tmp_path / f"run{stage}"
        run.mkdir()
        paddle.seed(stage)
        save_safetensors(mrt.build_model(cfg.model).state_dict(), run / "best_model.safetensors")
        log = [{"kind": "train", "step": s, "epoch": 0, "loss": 10.0 / s} for s in
               range(1, steps + 1)] + [{"kind": "eval", "step": steps, "epoch": 0, "mask_AP": 0.1}]
        (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    best = tmp_path / "run2" / "best_model.safetensors"
    best.rename(best.with_suffix(".bak"))  # stage 2 not trained yet: a clear error, nothing written
    with pytest.raises(FileNotFoundError, match="stage2.yml has no finished run"):
        course.ship(configs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    best.with_suffix(".bak").rename(best)
    meta = course.ship(configs, tmp_path / "out")
    assert meta["configs"] == configs and meta["steps"] == 6
    log = [json.loads(line) for line in open(tmp_path / "out" / "train_log.jsonl")]
    assert [(r["kind"], r["step"], r["stage"]) for r in log] == [
        ("train", 2, 1), ("train", 4, 1), ("eval", 4, 1),  # every log_iter-th step, the evals
        ("train", 6, 2), ("eval", 6, 2)]
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    shipped = checkpoint_config(tmp_path / "out" / course.WEIGHTS_NAME)
    assert shipped.model.eval_size == (160, 160)  # stage 2's config
    ours = dict(load_course_model(tmp_path / "out" / course.WEIGHTS_NAME)[0].state_dict())
    theirs = read_state_dict(tmp_path / "run2" / "best_model.safetensors")
    assert all(np.array_equal(ours[k].numpy(), theirs[k]) for k in theirs)


def test_ship_early_stops_the_recipe_at_its_step_and_ships_what_loads(tmp_path):
    data = tmp_path / "shapes"
    make_shapes(str(data), num_train=8, num_val=TEST_IMAGES, image_size=128, progress=False)
    meta = course.ship_early(steps=10, dataset_dir=data, out_dir=tmp_path / "early",
                             run_dir=tmp_path / "run")
    assert meta["steps"] == 10 and meta["batch_size"] == 8 and meta["processes"] == 1
    assert json.loads((tmp_path / "early" / "meta.json").read_text()) == meta
    steps = [r["step"] for r in read_log(str(tmp_path / "early" / "train_log.jsonl"))]
    assert steps == [10]  # every log_iter-th step (10) is kept
    model, cfg = load_course_model(tmp_path / "early" / course.EARLY.name)
    assert cfg.model.num_queries == 30 and not model.training  # the 10-minute recipe's model
