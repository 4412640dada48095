"""The notebooks' quick checkpoint: deterministic, cached by settings, a full run preferred."""

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.engine import quick
from mrtdetr_lib.engine.quick import (checkpoint_config, quick_folder, quick_settings,
                                      tiny_shapes_checkpoint)

SMALL = dict(steps=2, image_size=96, num_train=8, num_val=2, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two quick runs with the same settings in two separate caches, 1 and 2 threads set."""
    root = tmp_path_factory.mktemp("quick")
    paths = []
    for name, threads in (("a", 1), ("b", 2)):
        mrt.set_num_threads(threads)  # the helper trains with QUICK_THREADS whatever is set
        paths.append(tiny_shapes_checkpoint(cache=root / name, **SMALL))
    mrt.set_num_threads()
    return paths, root


def test_same_settings_give_the_same_weights(trained):
    (first, second), _ = trained
    a, b = paddle.load(first), paddle.load(second)
    assert set(a) == set(b) and len(a) > 100
    for name, value in a.items():
        np.testing.assert_array_equal(value.numpy(), b[name].numpy(), err_msg=name)


def test_cached_run_is_reused_and_keeps_only_what_is_needed(trained, monkeypatch):
    (first, _), root = trained
    def fail(*args):
        raise AssertionError("trained again although the cache holds these settings")
    monkeypatch.setattr(quick, "_train_quick", fail)
    assert tiny_shapes_checkpoint(cache=root / "a", **SMALL) == first
    folder = quick_folder(quick_settings(2, 96, 8, 2), root / "a")
    assert str(folder / "model_final.pdparams") == first
    names = {p.name for p in folder.iterdir()}
    assert {"config.yml", "model_final.pdparams", "shapes", "train_log.jsonl"} <= names
    assert "last.pdckpt" not in names  # the optimiser state is not needed to use the model
    assert [p.name for p in (root / "a" / "quick").iterdir()] == [folder.name]  # no temp left


def test_checkpoint_config_builds_the_model_that_loads_the_weights(trained):
    (first, _), _ = trained
    cfg = checkpoint_config(first)
    assert cfg.model.eval_size == (96, 96) and cfg.data.eval_size == [96, 96]
    model = mrt.build_model(cfg.model)
    weights = paddle.load(first)
    assert set(weights) == set(model.state_dict())
    from mrtdetr_lib.data import build_dataset
    assert len(build_dataset(cfg.data, "val")) == 2  # the run's own val split, absolute path


def test_settings_name_the_folder_and_are_checked(tmp_path):
    one = quick_folder(quick_settings(steps=10), tmp_path)
    assert one != quick_folder(quick_settings(steps=11), tmp_path)
    assert one != quick_folder(quick_settings(steps=10, seed=1), tmp_path)
    assert one == quick_folder(quick_settings(steps=10), tmp_path)
    assert one.parent == tmp_path / "quick" and "10steps_128px" in one.name
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        quick_settings(steps=0)


def test_given_weights_and_full_run(tmp_path, monkeypatch):
    given = tmp_path / "mine.pdparams"
    given.write_bytes(b"x")
    assert tiny_shapes_checkpoint(weights=given) == str(given)
    with pytest.raises(FileNotFoundError, match="nope.pdparams"):
        tiny_shapes_checkpoint(weights=tmp_path / "nope.pdparams")
    monkeypatch.setattr(quick, "FULL_MODEL", given)
    monkeypatch.setattr(quick, "_train_quick", lambda *a: None)
    assert tiny_shapes_checkpoint(use_full=True, cache=tmp_path) == str(given)
    monkeypatch.setenv("MRTDETR_QUICK", "1")  # quick mode: never the full run (nbval outputs)
    assert tiny_shapes_checkpoint(cache=tmp_path) != str(given)
    monkeypatch.setenv("MRTDETR_QUICK", "0")
    assert tiny_shapes_checkpoint(cache=tmp_path) == str(given)


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yml next to"):
        checkpoint_config(tmp_path / "w.pdparams")


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="multiple of 32 and >= 96"):
        quick_settings(image_size=64)
    assert mrt.tiny_shapes_checkpoint is tiny_shapes_checkpoint


def test_relative_data_folder_is_found_in_the_project(tmp_path, monkeypatch):
    """A full run's config.yml says `dataset/shapes`, relative to where `mrtdetr train` ran."""
    (tmp_path / "project" / "dataset" / "shapes").mkdir(parents=True)
    run = tmp_path / "project" / "output"
    run.mkdir()
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir = "dataset/shapes"
    mrt.save_config(cfg, str(run / "config.yml"))
    monkeypatch.setattr(quick, "ROOT", tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    got = checkpoint_config(run / "best_model.pdparams").data.dataset_dir
    assert got == str(tmp_path / "project" / "dataset" / "shapes")


def test_a_stopped_run_is_not_cached(tmp_path, monkeypatch):
    from mrtdetr_lib.engine import trainer

    def stopped_train(self):  # as if Ctrl-C / SIGTERM arrived after one step
        return {"steps": 1, "epoch": 0, "last_eval": None, "best": {}, "stopped": "SIGTERM"}

    monkeypatch.setattr(trainer.Trainer, "train", stopped_train)
    with pytest.raises(RuntimeError, match="stopped at step 1"):
        tiny_shapes_checkpoint(cache=tmp_path, **SMALL)
    assert not quick_folder(quick_settings(2, 96, 8, 2, 0), tmp_path).exists()
