"""bench/: the training-by-the-clock benchmark and its plot run end to end on a few images."""

import json

import cv2
import pytest
from conftest import ROOT, load_script


def load_bench(name):
    """Import bench/<name>.py as a module."""
    return load_script("bench", name)


def test_train_shapes_reports_a_curve_and_plot_curves_draws_it(tmp_path, capsys, monkeypatch):
    """The shipped 10-minute recipe, cut to 3 steps by `max_iters`: the schedule ends before
    the clock, so the final evaluation still happens and the JSON line carries it."""
    monkeypatch.chdir(ROOT)
    code = load_bench("train_shapes").main([
        "--minutes", "5", "--eval-every", "5", "-c", "configs/tiny_shapes_10min.yml",
        "--data", str(tmp_path / "shapes"), "--num-train", "8", "--num-val", "2",
        "--output-dir", str(tmp_path / "run"), "-o", "train.max_iters=3", "train.seed=1"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert result["what"] == "train_shapes" and result["iterations"] == 3
    assert [p["step"] for p in result["curve"]] == [3]
    assert 0.0 <= result["mask_AP"] <= 1.0 and result["seed"] == 1
    (tmp_path / "runs.jsonl").write_text(line + "\n")
    png = tmp_path / "curves.png"
    assert load_bench("plot_curves").main([str(tmp_path / "runs.jsonl"), "-o", str(png)]) == 0
    assert cv2.imread(str(png)) is not None


def test_train_shapes_as_two_processes_reports_rank_0s_line(tmp_path, capsys, monkeypatch):
    """`--procs 2`: the script relaunches itself under paddle.distributed.launch (gloo); the
    ranks stop at the same step (the schedule's end here) and rank 0's JSON line is printed."""
    monkeypatch.chdir(ROOT)
    code = load_bench("train_shapes").main([
        "--minutes", "5", "--eval-every", "5", "-c", "configs/tiny_shapes_10min.yml",
        "--procs", "2", "--data", str(tmp_path / "shapes"), "--num-train", "8",
        "--num-val", "2", "--output-dir", str(tmp_path / "run"),
        "-o", "train.max_iters=3", "data.batch_size=2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["procs"] == 2 and result["iterations"] == 3
    assert [p["step"] for p in result["curve"]] == [3]
    assert result["epochs"] == 1.5  # 8 images, 2 a process: 2 steps an epoch


def test_train_shapes_refuses_a_process_count_its_threads_cannot_feed(capsys):
    for procs in ("0", "3"):  # --threads defaults to 2: one thread a process at least
        with pytest.raises(SystemExit) as exit_:
            load_bench("train_shapes").main(["--procs", procs])
        assert exit_.value.code == 2
        assert f"--procs must be at least 1 and at most --threads (2), got {procs}" in (
            capsys.readouterr().err)


def test_profile_step_compare_runs_two_criteria_on_the_same_batches(tmp_path):
    """`profile_step.py --compare REV`: REV's loss package next to the working tree's, on the
    same batches and seeds; with the loss unchanged since HEAD, the same losses."""
    import subprocess

    from mrtdetr_lib.config import load_config
    from mrtdetr_lib.data.shapes import make_shapes
    from mrtdetr_lib.engine import Trainer

    profile = load_bench("profile_step")
    make_shapes(str(tmp_path / "shapes"), num_train=4, num_val=1, image_size=128, progress=False)
    cfg = load_config(str(ROOT / "configs" / "tiny_shapes_10min.yml"))
    cfg.data.dataset_dir, cfg.data.batch_size = str(tmp_path / "shapes"), 2
    cfg.train.output_dir, cfg.train.eval = str(tmp_path / "out"), False
    trainer = Trainer(cfg, progress=False)
    try:
        old = profile.criterion_at("HEAD", trainer)
    except subprocess.CalledProcessError:
        pytest.skip("no git history to take the old criterion from")
    assert type(old).__module__ == "mrtdetr_lib.loss_at_rev.criterion"
    result = profile.compare(trainer, old, steps=2, warmup=0, loss_only=True)
    assert result["old step"] > 0 and result["new step"] > 0
    unchanged = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                "mrtdetr_lib/loss"]).returncode == 0
    if unchanged:
        assert result["largest relative loss difference"] < 1e-6


def test_own_data_runs_the_whole_path_in_quick_mode(tmp_path, capsys):
    """Raw labels -> masks layout -> COCO -> checker -> 2 fine-tuning steps from the course
    checkpoint -> int8 ONNX -> its AP on the held-out tiles: one JSON line with every stage;
    `--ship` packages what chapter 07 reads (here into a temporary folder)."""
    bench, shipped = load_bench("own_data"), tmp_path / "shipped"  # not the course's own
    code = bench.main(["--steps", "2", "--calib", "2", "--eval-epochs", "50", "--ship",
                       str(shipped), "--output-dir", str(tmp_path)])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["what"] == "own_data" and result["steps"] == 2
    assert result["objects"]["val"] == [4, 30] and result["train_tiles"] == 105
    assert json.loads((shipped / "meta.json").read_text())["steps"] == 2
    cfg = bench.od.finetune_config(tmp_path / "coco", tmp_path / "x", quick=True)
    model = bench.od.finetuned_model(cfg, shipped / "model.safetensors")  # loads strictly
    assert not model.training and (shipped / "config.yml").is_file()
    assert list(result["seconds"]) == ["annotations_to_coco", "check", "fine_tune", "evaluate",
                                       "export_int8", "score_int8"]
    assert 0.0 <= result["int8_mask_AP"] <= 1.0 and result["int8_MB"] < result["fp32_MB"]
    assert (tmp_path / "exports" / "own_data_b1_int8.onnx").is_file()
