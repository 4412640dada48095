"""Your own data, end to end on the CPU: raw annotated files -> COCO -> fine-tuned -> int8 ONNX.

    python bench/own_data.py [--minutes 24] [--steps 3000] [--raw dataset/real/nuclei]
        [--output-dir output/bench_own_data] [--ship [DIR]] [-o train.base_lr=2e-4 ...]

Chapter 07's path on the nuclei image (2018 Data Science Bowl, BBBC038): the labels written as
an annotation tool's VOC masks layout (overlapping 128 px tiles; the bottom-right 256 px corner,
cut into four 128 px tiles, held out for validation), `x2coco` to COCO, the checker, fine-tuning
the `tiny` course checkpoint (`pretrain_weights: course`, re-initialised for 1 class) for
`--steps` steps or `--minutes` of training, whichever ends first, then ONNX export and static
int8 quantisation, and the mask AP of the int8 model on the held-out tiles. The issue's target:
the whole path in at most 30 minutes on a 2-core CPU with mask AP >= 0.5 on the held-out part.
Prints one JSON line: the seconds of each stage, the AP (eager EMA weights, int8) and whether
the targets were met. `--raw` reads the
fetched originals (data_scripts/fetch_real_data.py); by default the course's shipped copy.
`--ship` packages the fine-tuned weights, config, log and this JSON line as the model chapter 07
analyses in quick mode (`mrtdetr_lib/course/data/nuclei/finetuned/`).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import mrtdetr_lib as mrt
from mrtdetr_lib.config import apply_overrides
from mrtdetr_lib.course import own_data as od
from mrtdetr_lib.data.check import check_dataset
from mrtdetr_lib.infer import list_images

TARGET_MINUTES, TARGET_MASK_AP = 30.0, 0.5


def run(args: argparse.Namespace, threads: int) -> Dict:
    """Every stage, timed; returns the JSON-ready result."""
    out, seconds, start = Path(args.output_dir), {}, time.time()

    def lap(stage: str) -> None:
        seconds[stage] = round(time.time() - start - sum(seconds.values()), 1)

    written = od.write_nuclei_folders(out / "tool", folder=args.raw)
    counts = od.convert_tool_folders(out / "tool", out / "coco")
    lap("annotations_to_coco")
    for split in ("train", "val"):
        report = check_dataset(str(out / "coco" / "annotations" / f"instance_{split}.json"),
                               str(out / "coco" / split), progress=False)
        if not report.ok:
            raise ValueError(f"the converted {split} split fails the checker:\n{report}")
    lap("check")
    cfg = od.finetune_config(out / "coco", out / "train", quick=True, steps=args.steps)
    cfg.train.snapshot_epoch = args.eval_epochs
    cfg = apply_overrides(cfg, args.opt)
    trainer = od.fine_tune(cfg, minutes=args.minutes, progress=False)
    lap("fine_tune")
    eager = trainer.evaluate()
    model = mrt.build_model(cfg.model)
    model.set_state_dict(trainer.weights())
    model.eval()
    lap("evaluate")
    calibration = list_images(infer_dir=str(out / "coco" / "train"))[:args.calib]
    fp32, int8 = od.export_int8(model, cfg, out / "exports", calibration)
    lap("export_int8")
    quantised = od.score_onnx(int8, cfg)
    lap("score_int8")
    total_minutes = (time.time() - start) / 60
    result = {"what": "own_data", "data": "nuclei (BBBC038), one 512 px image",
            "train_tiles": len(written["train"]), "objects": counts,
            "steps": trainer.global_step, "minutes_cap": args.minutes, "seconds": seconds,
            "total_minutes": round(total_minutes, 2),
            "eager_mask_AP": round(eager["mask_AP"], 4),
            "eager_mask_APs": round(eager["mask_APs"], 4),
            "int8_mask_AP": round(quantised["mask_AP"], 4),
            "int8_bbox_AP": round(quantised["bbox_AP"], 4),
            "int8_MB": round(int8.stat().st_size / 2**20, 2),
            "fp32_MB": round(fp32.stat().st_size / 2**20, 2),
            "within_minutes": total_minutes <= TARGET_MINUTES,
            "mask_AP_target_met": quantised["mask_AP"] >= TARGET_MASK_AP,
            "threads": threads}
    if args.ship:
        result["shipped"] = str(od.ship_finetuned(trainer, result, Path(args.ship)))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=24.0,
                        help="training time cap (the rest of the 30 minutes converts, exports, "
                             "quantises and scores)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps at most")
    parser.add_argument("--eval-epochs", type=int, default=4,
                        help="evaluate every N epochs (105 tiles, batch 4: 26 steps an epoch)")
    parser.add_argument("--calib", type=int, default=32, help="calibration images (train tiles)")
    parser.add_argument("--raw", default=None,
                        help="folder with the fetched img2d.tif / mask2d.tif (default: the "
                             "course's shipped copy)")
    parser.add_argument("--output-dir", default="output/bench_own_data")
    parser.add_argument("--ship", nargs="?", const=str(od.FINETUNED.parent), default=None,
                        metavar="DIR", help="package the result as chapter 07's shipped "
                        "fine-tune (default folder: the course's)")
    parser.add_argument("-o", "--opt", nargs="*", help="config overrides, as in mrtdetr train")
    args = parser.parse_args(argv)
    print(json.dumps(run(args, mrt.setup())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
