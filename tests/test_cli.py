"""`mrtdetr train|eval|infer`: PaddleDetection's flags, one-line errors, a quick-mode train run."""

import json
import os
import subprocess
import sys

import pytest

from mrtdetr_lib import cli
from mrtdetr_lib.cli import COMMANDS, build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_shapes.yml")


def _error_line(capsys, argv):
    """Run the CLI; return (exit status, stderr lines)."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    return status, [line for line in err if not line.startswith("quick mode")]


def test_quick_mode_caps_and_says_so_only_where_data_is_read(capsys):
    """train and eval read data sets, so quick mode caps them and says so; infer and export
    read no data set, and a notice there would mean nothing."""
    for command in ("train", "eval", "infer", "export"):
        cfg = cli._config(build_parser().parse_args([command, "-c", CONFIG]))
        said = "quick mode" in capsys.readouterr().err
        capped = cfg.data.max_images is not None
        assert said == capped == (command in ("train", "eval")), command


def test_ppdet_flags_parse():
    args = build_parser().parse_args(["train", "-c", CONFIG, "--eval", "--amp", "-r", "x.pdckpt",
                                      "-o", "epochs=1", "base_lr=0.001", "-o", "seed=3"])
    assert (args.eval, args.amp, args.resume) == (True, True, "x.pdckpt")
    assert args.opt == ["epochs=1", "base_lr=0.001", "seed=3"]
    args = build_parser().parse_args(["infer", "-c", "tiny", "--infer_dir", "d",
                                      "--output_dir", "o", "--draw_threshold", "0.3"])
    assert (args.infer_dir, args.output_dir, args.draw_threshold) == ("d", "o", 0.3)
    assert set(COMMANDS) >= {"train", "eval", "infer"}


@pytest.mark.parametrize("argv, message", [
    (["train", "-c", CONFIG, "--bogus"], "unrecognized arguments: --bogus"),
    (["fly", "-c", CONFIG], "invalid choice: 'fly'"),
    (["train"], "the following arguments are required: -c"),
    (["train", "-c", "no/such.yml"], "config file not found: no/such.yml"),
    (["train", "-c", CONFIG, "-o", "epoch=3"], "unknown override key 'epoch'"),
    (["train", "-c", CONFIG, "-o", "epochs=many"], "train.epochs must be a number"),
    (["train", "-c", CONFIG, "-o", "target_metrics=segm"],
     "train.target_metrics must be 'mask' or 'bbox', got 'segm'"),
    (["eval", "-c", CONFIG], "eval needs trained weights: -o weights=PATH_OR_URL"),
    (["eval", "-c", CONFIG, "-o", "weights=no/such.pdparams"],
     "weights file not found: no/such.pdparams"),
    (["infer", "-c", CONFIG, "-o", "weights=w.pdparams", "--infer_img", "nope.jpg"],
     "--infer_img not found: nope.jpg"),
    (["infer", "-c", CONFIG, "-o", "weights=w.pdparams"], "give --infer_img IMAGE or"),
])
def test_bad_input_is_one_clear_line(capsys, argv, message):
    status, lines = _error_line(capsys, argv)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("mrtdetr: error: ") and message in lines[0], \
        lines


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "mrtdetr_lib", "train", "-c", CONFIG, "-o",
                           "nope=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mrtdetr: error: " in proc.stderr and "unknown override key 'nope'" in proc.stderr


def test_quick_train_eval_infer_from_a_fresh_checkout(tmp_path):
    """`make shapes` + the README's three commands, in quick mode (a few steps and images)."""
    from mrtdetr_lib.data.shapes import make_shapes
    make_shapes(str(tmp_path / "shapes"), num_train=16, num_val=4, progress=False)
    env = {**os.environ, "MRTDETR_QUICK": "1"}
    data = ["-o", f"data.dataset_dir={tmp_path / 'shapes'}", "num_workers=0"]
    out = str(tmp_path / "out")

    def mrtdetr(*argv):
        proc = subprocess.run([sys.executable, "-m", "mrtdetr_lib", *argv, *data], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip().splitlines()

    summary = json.loads(mrtdetr("train", "-c", CONFIG, "--eval", "--output_dir", out,
                                 "-o", "epochs=1")[-1])
    assert summary["steps"] == 4 and summary["best"]["step"] == 4  # 16 images / batch 4
    for name in ("last.pdckpt", "best_model.safetensors", "model_final.safetensors", "config.yml",
                 "train_log.jsonl", "curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    best = os.path.join(out, "best_model.safetensors")
    metrics = json.loads(mrtdetr("eval", "-c", CONFIG, "-o", f"weights={best}")[-1])
    assert 0.0 <= metrics["mask_AP"] <= 1.0
    lines = mrtdetr("infer", "-c", CONFIG, "-o", f"weights={best}", "--infer_dir",
                    str(tmp_path / "shapes" / "val"), "--output_dir", str(tmp_path / "drawn"),
                    "--draw_threshold", "0.0")
    assert len(lines) == 4 and len(os.listdir(tmp_path / "drawn")) == 4
