"""The VisualDL dashboard: `mrtdetr train --use_vdl` writes ppdet's tags; VisualDL reads them."""

import glob
import os
import sys

import pytest

from mrtdetr_lib.cli import build_parser, main
from mrtdetr_lib.engine.log import read_log
from mrtdetr_lib.engine.vdl import scalar_tags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_shapes.yml")


def test_tags_are_ppdets():
    train = {"kind": "train", "step": 3, "epoch": 0, "lr": 1e-4, "loss": 9.0,
             "loss_class": 1.0, "loss_mask_aux_dn": 0.5, "seconds": 0.3}
    assert scalar_tags(train) == {"lr": 1e-4, "loss": 9.0, "loss_class": 1.0,
                                  "loss_mask_aux_dn": 0.5}
    evaluation = {"kind": "eval", "step": 3, "epoch": 1, "bbox_AP": 0.2, "mask_AP": 0.3,
                  "mask_AP50": 0.6, "best_mask_AP": 0.3}
    assert scalar_tags(evaluation) == {"bbox-mAP": 0.2, "mask-mAP": 0.3,
                                       "eval/mask_AP50": 0.6, "eval/best_mask_AP": 0.3}


def test_use_vdl_parses_as_ppdet_and_false_means_false():
    parse = lambda *a: build_parser().parse_args(["train", "-c", CONFIG, *a])  # noqa: E731
    assert (parse().use_vdl, parse().vdl_log_dir) == (False, "vdl_log_dir/scalar")
    assert parse("--use_vdl").use_vdl and parse("--use_vdl", "true").use_vdl
    assert not parse("--use_vdl", "false").use_vdl  # ppdet's type=bool would say True
    with pytest.raises(SystemExit):
        parse("--use_vdl", "maybe")


def test_use_vdl_without_visualdl_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # `import visualdl` raises ImportError
    assert main(["train", "-c", CONFIG, "--use_vdl"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("quick mode")]
    assert err == ["mrtdetr: error: --use_vdl needs VisualDL: pip install visualdl==2.5.3 "
                   '(or pip install -e ".[vdl]" in the repository)']


def test_train_with_use_vdl_logs_every_loss_term_lr_and_ap(tmp_path, monkeypatch, capsys):
    """A quick-mode run with an evaluation; VisualDL's own reader finds every scalar of the
    run's JSON-lines log, at its step."""
    pytest.importorskip("visualdl", reason="the optional extra: pip install -e '.[vdl]'")
    from visualdl import LogReader

    from mrtdetr_lib.data.shapes import make_shapes
    make_shapes(str(tmp_path / "shapes"), num_train=8, num_val=2, image_size=128,
                progress=False)
    monkeypatch.setenv("MRTDETR_QUICK", "1")
    out, vdl = tmp_path / "out", tmp_path / "vdl"
    status = main(["train", "-c", CONFIG, "--eval", "--use_vdl", "--vdl_log_dir", str(vdl),
                   "--output_dir", str(out), "-o", f"data.dataset_dir={tmp_path / 'shapes'}",
                   "num_workers=0", "batch_size=4", "epochs=1", "train_sizes=[96]"])
    assert status == 0, capsys.readouterr().err
    files = glob.glob(str(vdl / "vdlrecords.*.log"))
    assert len(files) == 1  # one file, opened at the first record
    reader = LogReader(file_path=files[0])
    records = read_log(str(out / "train_log.jsonl"))
    expected = {}
    for record in records:
        for tag, value in scalar_tags(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert {"loss", "loss_class", "loss_mask_aux", "loss_dice_dn", "lr", "mask-mAP",
            "bbox-mAP", "eval/mask_AP50"} <= set(expected)
    assert set(reader.get_tags()["scalar"]) == set(expected)
    for tag, points in expected.items():
        logged = [(p.id, p.value) for p in reader.get_data("scalar", tag)]
        assert [s for s, _ in logged] == [s for s, _ in points], tag
        for (_, got), (_, want) in zip(logged, points):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12), tag  # stored as float32
