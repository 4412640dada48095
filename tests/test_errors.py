"""User mistakes are one line and exit 2 (UserError, OSError); real bugs keep their traceback."""

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib import cli
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_shapes.yml")


def _run(capsys, argv):
    """cli.main in this process: (exit status, stderr lines but the quick-mode notice)."""
    try:
        status = cli.main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    return status, [line for line in err if not line.startswith("quick mode")]


def _one_line(capsys, argv, *fragments):
    """The error is one line with every fragment; the rest of stderr is a progress bar."""
    status, lines = _run(capsys, argv)
    errors = [line for line in lines if line.startswith("mrtdetr: error: ")]
    assert status == 2 and len(errors) == 1, lines
    assert not [line for line in lines if line not in errors and "it/s]" not in line and line]
    assert all(f in errors[0] for f in fragments), errors
    return errors[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=4, num_val=2, image_size=128, progress=False)
    return root


def _data(root):
    return ["-o", f"data.dataset_dir={root}", "num_workers=0", "batch_size=4"]


# ---------------------------------------------------------------- config values
@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
    ("log_iter=0", "train.log_iter must be an integer >= 1, got 0"),
    ("hidden_dim=0", "model.hidden_dim must be an integer >= 1, got 0"),
    ("model.eval_size=[64]", "model.eval_size must be [h, w]: two positive multiples of 32"),
    ("model.eval_size=[250,250]", "model.eval_size must be [h, w]: two positive multiples of 32"),
    ("model.eval_size=[64,64]", "a 64x64 input has 84 feature positions, fewer than "
                                "model.num_queries 100"),
    ("max_iters=0", "train.max_iters must be an integer >= 1 or null, got 0"),
    ("max_iters=2.5", "train.max_iters must be an integer >= 1 or null, got 2.5"),
    ("max_images=many", "data.max_images must be an integer >= 1 or null, got 'many'"),
    ("epochs=0", "train.epochs must be an integer >= 1, got 0"),
    ("epochs=-1", "train.epochs must be an integer >= 1, got -1"),
    ("ema_decay=2", "train.ema_decay must be in [0, 1), got 2.0"),
    ("ema_decay=.nan", "train.ema_decay must be in [0, 1), got nan"),
    ("data.train_sizes=[]", "data.train_sizes must be a non-empty list of positive integers"),
    ("hidden_dim=66", "model.hidden_dim 66 must be divisible by the number of heads 4"),
])
def test_out_of_range_config_values_name_field_and_range(capsys, override, message):
    _one_line(capsys, ["train", "-c", CONFIG, "-o", override], message)


def test_every_bad_field_is_listed_at_once():
    cfg = mrt.get_config("tiny")
    cfg.data.batch_size, cfg.train.epochs = 0, 0
    with pytest.raises(UserError, match=r"data\.batch_size .*; train\.epochs "):
        mrt.config.validate(cfg)


def test_trainer_checks_fields_set_in_code():
    cfg = mrt.get_config("tiny")
    cfg.train.ema_decay = 2.0
    with pytest.raises(UserError, match=r"train\.ema_decay must be in \[0, 1\), got 2\.0"):
        mrt.Trainer(cfg)


def test_null_max_iters_means_no_limit_and_a_file_value_may_be_overridden(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("preset: tiny\ntrain:\n  epochs: 0\n  max_iters: null\n")
    cfg = mrt.load_config(str(path), ["epochs=2"])
    assert (cfg.train.epochs, cfg.train.max_iters) == (2, None)


def test_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("preset: tiny\ntrain:\n  epochs: [1, 2\n  seed: 3\n")
    line = _one_line(capsys, ["train", "-c", str(path)], str(path), "line 4, column",
                     "YAML syntax error")
    assert "Traceback" not in line
    _one_line(capsys, ["train", "-c", CONFIG, "-o", "epochs=[1"], "override 'epochs=[1'")


@pytest.mark.parametrize("argv, message", [
    (["infer", "-c", CONFIG, "--infer_img", "a.jpg", "--draw_threshold", "2"],
     "argument --draw_threshold: must be in [0, 1], got 2"),
    (["infer", "-c", CONFIG, "--infer_img", "a.jpg", "--draw_threshold", "nan"],
     "argument --draw_threshold: must be in [0, 1], got nan"),
    (["export", "-c", CONFIG, "--batch", "-1"], "argument --batch: must be an integer >= 1"),
    (["export", "-c", CONFIG, "--batch", "0"], "argument --batch: must be an integer >= 1"),
    (["infer", "-c", CONFIG, "--infer_img", "a.jpg", "--slice_infer", "--match_threshold", "6"],
     "argument --match_threshold: must be in [0, 1], got 6"),
    (["deploy", "--model_dir", "exports", "--image_file", "a.jpg", "--threshold", "-0.1"],
     "argument --threshold: must be in [0, 1], got -0.1"),
])
def test_bad_flags_are_refused_before_any_work(capsys, argv, message):
    _one_line(capsys, argv, message)


def test_export_negative_batch_in_a_fresh_process_says_why():
    """It used to die with exit 134 and nothing on screen (the converter's log had the reason)."""
    proc = subprocess.run([sys.executable, "-m", "mrtdetr_lib", "export", "-c", CONFIG, "-o",
                           "weights=course", "--batch", "-1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --batch: must be an integer >= 1, got -1" in proc.stderr


def test_export_without_an_eval_size_says_which_field(capsys, tmp_path):
    """`model.eval_size=null` (anchors computed on the fly) leaves an export no size to trace."""
    _one_line(capsys, ["export", "-c", CONFIG, "-o", "weights=course", "model.eval_size=null",
                       "--output_dir", str(tmp_path)],
              "model.eval_size is null", "-o model.eval_size=[640,640]")
    assert not list(tmp_path.iterdir())  # refused before anything was written


# ---------------------------------------------------------------- data and weights files
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_training_image_is_one_line_naming_it(capsys, shapes, tmp_path, damage):
    root = tmp_path / "shapes"
    shutil.copytree(shapes, root)
    image = root / "train" / "000001.jpg"
    if damage == "corrupt":
        image.write_bytes(b"\xff\xd8 not a jpeg")
    else:
        image.unlink()
    why = "cannot decode image" if damage == "corrupt" else "cannot read image"
    _one_line(capsys, ["train", "-c", CONFIG, *_data(root), "--output_dir", str(tmp_path / "o")],
              why, str(image), "(image id")


def test_an_old_data_eval_size_unlike_the_models_is_one_line(capsys):
    _one_line(capsys, ["eval", "-c", CONFIG, "-o", "weights=course", "model.eval_size=[320,320]",
                       "data.eval_size=[256,256]"],
              "data.eval_size [256, 256] differs from model.eval_size [320, 320]")


def test_fewer_classes_than_the_data_is_one_line(capsys, shapes, tmp_path):
    _one_line(capsys, ["train", "-c", CONFIG, *_data(shapes), "num_classes=2", "--output_dir",
                       str(tmp_path / "o")],
              "instances_train.json has 4 categories, more than model.num_classes=2")


@pytest.mark.parametrize("name, content", [
    ("bad_header.safetensors", b"\xff" * 8 + b"{not json"),
    ("cut.pdparams", None),
])
def test_damaged_weights_file_is_one_line_naming_it(capsys, shapes, tmp_path, name, content):
    from mrtdetr_lib.weights import COURSE_CHECKPOINT, safetensors_to_pdparams

    path = tmp_path / name
    if content is None:  # the first kilobyte of a real .pdparams
        full = safetensors_to_pdparams(COURSE_CHECKPOINT, tmp_path / "full.pdparams")
        content = full.read_bytes()[:1024]
    path.write_bytes(content)
    image = str(shapes / "val" / "000000.jpg")
    _one_line(capsys, ["infer", "-c", CONFIG, "-o", f"weights={path}", "--infer_img", image],
              str(path))


# ---------------------------------------------------------------- bugs keep their traceback
def test_a_bug_is_not_swallowed(monkeypatch, capsys):
    """paddle raises ValueError for a shape mismatch inside the model: that is a bug, not the
    user's mistake, and must reach the caller with its traceback."""
    def shape_bug(args, cfg):
        raise ValueError("(InvalidArgument) Broadcast dimension mismatch")

    monkeypatch.setitem(cli.COMMANDS, "infer", (*cli.COMMANDS["infer"][:2], shape_bug))
    with pytest.raises(ValueError, match="Broadcast dimension mismatch"):
        cli.main(["infer", "-c", CONFIG])


def test_full_disk_is_named_as_such(monkeypatch, capsys):
    def full(args, cfg):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/model.pdparams")

    monkeypatch.setitem(cli.COMMANDS, "train", (*cli.COMMANDS["train"][:2], full))
    _one_line(capsys, ["train", "-c", CONFIG],
              "out/model.pdparams: no space left on device (ENOSPC)")


# ---------------------------------------------------------------- infer writes no data away
def _infer(shapes_dir, output_dir):
    return ["infer", "-c", CONFIG, "-o", "weights=course", "--infer_dir", str(shapes_dir),
            "--output_dir", str(output_dir)]


def test_infer_refuses_to_overwrite_its_input_images(capsys, shapes, tmp_path):
    images = tmp_path / "photos"
    shutil.copytree(shapes / "val", images)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    _one_line(capsys, _infer(images, images), "would overwrite the input image",
              "choose another --output_dir")
    _one_line(capsys, _infer(images, str(images) + "/./"), "would overwrite the input image")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (we are root in CI's container), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'})")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_infer_onto_a_full_disk_fails_naming_the_file(capsys, shapes, tiny_disk):
    (tiny_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    status, lines = _run(capsys, _infer(shapes / "val", tiny_disk))
    assert status == 2 and len(lines) == 1, lines
    assert "no space left on device (ENOSPC)" in lines[0] and str(tiny_disk) in lines[0]
    assert "000000.jpg" in lines[0]
    assert " -> " not in capsys.readouterr().out  # nothing reported saved
    assert sorted(os.listdir(tiny_disk)) == ["filler"]  # no 0-byte or partial drawing left


def test_a_full_disk_under_any_atomic_write_names_the_file(tiny_disk):
    """Checkpoints, logs and drawings: write() names no file on ENOSPC; atomic_write does."""
    from mrtdetr_lib.files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"\0" * 200_000)

    target = tiny_disk / "last.pdckpt"
    with pytest.raises(OSError) as caught:
        atomic_write(target, write)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert os.listdir(tiny_disk) == []  # the partial .tmp is gone
    assert cli._os_error(caught.value) == (f"{target}: no space left on device (ENOSPC): free "
                                           "some space or write elsewhere")


def test_unwritable_output_folder_fails_naming_it(capsys, shapes, tmp_path, monkeypatch):
    from mrtdetr_lib import infer

    monkeypatch.setattr(infer, "atomic_write", lambda path, write: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)))
    line = _one_line(capsys, _infer(shapes / "val", tmp_path / "out"), "Permission denied")
    assert os.path.join(str(tmp_path / "out"), "000000.jpg") in line


def test_write_image_round_trips(tmp_path):
    from mrtdetr_lib.data import read_image
    from mrtdetr_lib.infer import write_image

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    path = write_image(str(tmp_path / "red.png"), rgb)
    assert np.array_equal(read_image(path), rgb)
