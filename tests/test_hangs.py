"""Nothing hangs: every loop trains or stops with a message (each case under a timeout).

`data.train_sizes=[]` with num_workers 0 hung forever (the batch transform raised in paddle's
feeding thread), and resuming with a larger `data.batch_size` spun at 100 % CPU (the epoch had no
batch left). Cases that hung run in a subprocess with `timeout=`, so a regression fails the test.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.data import build_loader
from mrtdetr_lib.engine import Trainer
from mrtdetr_lib.engine.log import read_log
from mrtdetr_lib.errors import UserError
from mrtdetr_lib.weights import set_exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_shapes.yml")


def _python(code, timeout=180):
    """Run `code` in a fresh interpreter; a hang fails with TimeoutExpired."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _mrtdetr(*argv, timeout=180):
    return subprocess.run([sys.executable, "-m", "mrtdetr_lib", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from mrtdetr_lib.data.shapes import make_shapes
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=4, num_val=1, image_size=96, progress=False)
    return root


def _cfg(shapes, out, **train):
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = str(shapes), 0, 1
    cfg.data.train_sizes = [96]
    cfg.train.eval, cfg.train.output_dir, cfg.train.log_iter = False, str(out), 1000
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory):
    """3 steps of batch 1 on 4 images: the checkpoint stops inside epoch 0, at batch 3 of 4."""
    out = tmp_path_factory.mktemp("run")
    paddle.seed(0)
    Trainer(_cfg(shapes, out, max_iters=3), progress=False).train()
    return out / "last.pdckpt"


@pytest.mark.parametrize("sizes", ["[]", "[0]"])
def test_empty_or_zero_train_sizes_fail_at_once(shapes, tmp_path, sizes):
    proc = _mrtdetr("train", "-c", CONFIG, "--output_dir", str(tmp_path), "-o",
                    f"data.train_sizes={sizes}", "num_workers=0", f"dataset_dir={shapes}")
    assert proc.returncode == 2 and "data.train_sizes" in proc.stderr, proc.stderr[-2000:]
    # the library path that skips the config check (a field set in code) fails as clearly
    proc = _python(f'''
        import mrtdetr_lib as mrt
        from mrtdetr_lib.data import build_loader
        cfg = mrt.get_config("tiny")
        cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = {str(shapes)!r}, 0, 2
        cfg.data.train_sizes = {sizes}
        next(iter(build_loader(cfg, "train")))
    ''')
    assert proc.returncode == 1 and "UserError: data.train_sizes must be" in proc.stderr


def test_a_failing_collate_raises_with_its_traceback_instead_of_hanging():
    """Any exception in the num_workers=0 feeding thread (here the collate_fn's) reaches the
    caller; paddle's loader alone waits forever for the batch."""
    proc = _python('''
        import numpy as np
        import paddle
        from mrtdetr_lib.data.loader import LoaderWithErrors, SeededBatchSampler

        def broken_collate(samples):
            raise ZeroDivisionError("a bug in a batch transform")

        class Data(paddle.io.Dataset):
            collate_fn = staticmethod(broken_collate)
            def __len__(self):
                return 4
            def __getitem__(self, key):
                return {"image": np.zeros(3, "float32")}

        next(iter(LoaderWithErrors(Data(), SeededBatchSampler(4, 2), num_workers=0)))
    ''')
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "RuntimeError: loading a batch failed" in proc.stderr
    assert "in broken_collate" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_resuming_with_a_larger_batch_names_the_field(checkpoint, shapes, tmp_path):
    proc = _mrtdetr("train", "-c", CONFIG, "-r", str(checkpoint), "--output_dir", str(tmp_path),
                    "-o", "batch_size=2", "num_workers=0", f"dataset_dir={shapes}",
                    "train_sizes=[96]", "max_iters=6")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.batch_size 1 -> 2" in proc.stderr and "last.pdckpt" in proc.stderr


def test_an_epoch_with_no_batch_left_stops_with_a_message(checkpoint, shapes, tmp_path):
    """Same config, but the data set shrank from 4 to 2 images since the checkpoint (at batch 3
    of 4): no batch is left in the epoch, and the run stops instead of spinning."""
    smaller = tmp_path / "shapes"
    smaller.mkdir()
    (smaller / "train").symlink_to(shapes / "train")
    anno = json.loads((shapes / "instances_train.json").read_text())
    anno["images"] = anno["images"][:2]
    kept = {image["id"] for image in anno["images"]}
    anno["annotations"] = [a for a in anno["annotations"] if a["image_id"] in kept]
    (smaller / "instances_train.json").write_text(json.dumps(anno))
    proc = _python(f'''
        import dataclasses
        import mrtdetr_lib as mrt
        from mrtdetr_lib.data import build_dataset
        from mrtdetr_lib.engine import Trainer
        cfg = mrt.get_config("tiny")
        cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = {str(shapes)!r}, 0, 1
        cfg.data.train_sizes = [96]
        cfg.train.eval, cfg.train.output_dir, cfg.train.log_iter = False, {str(tmp_path)!r}, 1000
        cfg.train.max_iters, cfg.train.resume = 6, {str(checkpoint)!r}
        data = build_dataset(dataclasses.replace(cfg.data, dataset_dir={str(smaller)!r}),
                             "train")
        Trainer(cfg, train_data=data, progress=False).train()
    ''')
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "stopped after batch 3, but an epoch now has 2 batches" in proc.stderr


def test_a_checkpoint_saved_at_an_epochs_end_resumes_into_the_next(shapes, tmp_path):
    paddle.seed(0)
    run = Trainer(_cfg(shapes, tmp_path, max_iters=6), progress=False).run()
    for record in run:  # leave right after the epoch's 4th and last step, before its end
        if record["step"] == 4:
            break
    run.close()
    rest = Trainer(_cfg(shapes, tmp_path, max_iters=5, resume=str(tmp_path / "last.pdckpt")),
                   progress=False)
    assert (rest.epoch, rest.step_in_epoch) == (0, 4)
    rest.train()
    steps = [(r["step"], r["epoch"]) for r in read_log(str(tmp_path / "train_log.jsonl"))]
    assert steps[-1] == (5, 1)


def test_other_changes_are_listed_and_resume(checkpoint, shapes, tmp_path, capsys):
    cfg = _cfg(shapes, tmp_path, max_iters=4, resume=str(checkpoint))
    cfg.train.log_iter = 7
    trainer = Trainer(cfg, progress=False)
    assert trainer.global_step == 3
    line = capsys.readouterr().out.strip().splitlines()[-1]
    listed = "changed since: train.max_iters 3 -> 4; train.log_iter 1000 -> 7; train.output_dir"
    assert line.startswith("resumed from") and listed in line


def test_a_checkpoint_of_another_architecture_is_one_clear_error(checkpoint, shapes, tmp_path):
    cfg = _cfg(shapes, tmp_path, resume=str(checkpoint))
    cfg.model.num_queries = 50
    with pytest.raises(UserError, match=r"other settings.*model\.num_queries 100 -> 50"):
        Trainer(cfg, progress=False)
    model = mrt.build_model(_cfg(shapes, tmp_path).model)  # the state check, without a config
    state = dict(model.state_dict())
    state["transformer.query_pos_head.layers.0.weight"] = paddle.zeros([3, 3])
    with pytest.raises(UserError, match=r"x\.pdckpt .*mis-shaped.*query_pos_head.*\[3, 3\]"):
        set_exact(model, state, "x.pdckpt")


def _feeding_threads():
    return {t for t in threading.enumerate() if "_thread_loop" in t.name}


def test_leaving_a_loader_or_a_run_early_stops_the_feeding_thread(shapes, tmp_path):
    """paddle's feeding thread of a loader left mid-epoch waited on its full queue forever (it
    holds its iterator alive, so paddle's __del__ clean-up never ran): a thread leaked per run."""
    before = _feeding_threads()
    for _ in build_loader(_cfg(shapes, tmp_path), "train"):
        break
    assert _feeding_threads() == before
    run = Trainer(_cfg(shapes, tmp_path, max_iters=6), progress=False).run()
    next(run)  # one step, mid-epoch: the loader has more batches queued
    run.close()
    assert _feeding_threads() == before
