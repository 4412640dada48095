"""`mrtdetr train|eval|infer|export`: PaddleDetection's tools/*.py flags (`python -m mrtdetr_lib`).

    mrtdetr train -c configs/tiny_shapes.yml --eval [-r output/tiny_shapes/last.pdckpt] [--amp]
    mrtdetr eval  -c configs/tiny_shapes.yml -o weights=output/tiny_shapes/best_model.safetensors
    mrtdetr infer -c configs/tiny_shapes.yml -o weights=... --infer_img a.jpg --draw_threshold 0.5
    mrtdetr infer -c ... --infer_img big.jpg --slice_infer --slice_size 640 640 --combine_method nmm
    mrtdetr export -c configs/tiny_shapes.yml -o weights=... trt=True
    mrtdetr deploy --model_dir exports --image_file a.jpg --run_mode openvino [--run_benchmark]

`-c` takes a YAML config (or a preset name: s m l x h tiny); `-o key=value` overrides any config
field (`section.key=value` when a key is ambiguous). Several processes (GPUs):
`python -m paddle.distributed.launch --nproc_per_node 4 $(which mrtdetr) train -c ...`.
With MRTDETR_QUICK=1 the commands take the small path (few steps and images) for tests.
"""

import argparse
import errno
import functools
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

from .config import Config, load_config, quick_mode
from .errors import UserError
from .runtime import setup

QUICK_ITERS, QUICK_IMAGES = 10, 16


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise SystemExit(_fail(f"{message} (see `{self.prog} --help`)"))


def _fail(message: str) -> int:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()] or ["failed"]
    # one line: a report's items (e.g. every key a weights file lacks) follow its first line
    print(f"mrtdetr: error: {' '.join(lines[:1] + ['; '.join(lines[1:])]).strip()}",
          file=sys.stderr)
    return 2


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _config(args: argparse.Namespace) -> Config:
    """-c file or preset, then -o overrides, then the command's flags, then quick mode caps
    (for the commands that read a data set: train and eval)."""
    cfg = load_config(args.config, args.opt)
    if quick_mode() and args.command in ("train", "eval"):
        cfg.train.max_iters = min(cfg.train.max_iters or QUICK_ITERS, QUICK_ITERS)
        cfg.data.max_images = min(cfg.data.max_images or QUICK_IMAGES, QUICK_IMAGES)
        print(f"quick mode (MRTDETR_QUICK=1): at most {cfg.train.max_iters} steps and "
              f"{cfg.data.max_images} images per split", file=sys.stderr)
    return cfg


def _need_weights(cfg: Config, command: str) -> str:
    if not cfg.train.weights:
        raise UserError(f"{command} needs trained weights: -o weights=PATH_OR_URL")
    return cfg.train.weights


def _model_with_weights(cfg: Config, command: str):
    weights = _need_weights(cfg, command)
    from .model.detr import build_model
    from .weights import load_pretrained

    model = build_model(cfg.model)
    load_pretrained(model, weights)
    model.eval()
    return model


# ---------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", action="store_true", help="evaluate during training, keep the best")
    p.add_argument("-r", "--resume", help="checkpoint (last.pdckpt) to continue from")
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU; no effect on CPU)")
    p.add_argument("--use_vdl", nargs="?", const=True, default=False, type=_flag,
                   help="write a VisualDL log of the losses, lr and AP (ppdet's flag; "
                   "`--use_vdl` or `--use_vdl true`)")
    p.add_argument("--vdl_log_dir", default="vdl_log_dir/scalar",
                   help="the VisualDL log folder (default: %(default)s, as ppdet)")


def _flag(text: str) -> bool:
    """ppdet passes `--use_vdl true`; unlike its `type=bool`, "false" here means False."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from .engine import Trainer

    cfg.train.eval = cfg.train.eval or args.eval
    cfg.train.amp = cfg.train.amp or args.amp
    cfg.train.resume = args.resume or cfg.train.resume
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    callbacks = []
    if args.use_vdl:
        from .engine.vdl import VisualDLWriter

        callbacks.append(VisualDLWriter(args.vdl_log_dir))
    trainer = Trainer(cfg, callbacks=callbacks)
    try:
        result = trainer.train()
    finally:
        for callback in callbacks:
            callback.close()
    if trainer.is_main:
        print(json.dumps({"steps": result["steps"], "stopped": result["stopped"],
                          "best": result["best"], "output_dir": cfg.train.output_dir}))
    return 130 if result["stopped"] else 0


# ---------------------------------------------------------------- eval
def _eval(args: argparse.Namespace, cfg: Config) -> int:
    from .data import build_dataset
    from .engine import evaluate, summary

    model = _model_with_weights(cfg, "eval")
    val = build_dataset(cfg.data, "val", cfg.model.eval_size)
    metrics = evaluate(model, val, args.output_dir, verbose=True)
    for key, result in metrics.items():
        print(f"{key} per-class AP: " + ", ".join(f"{name} {ap:.3f}" for name, ap in
                                                   result["per_class_ap"].items()))
    print(json.dumps(summary(metrics)))
    return 0


# ---------------------------------------------------------------- infer
def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--infer_img", help="one image to run on")
    p.add_argument("--infer_dir", help="a folder of images to run on")
    p.add_argument("--draw_threshold", type=_fraction, default=0.5,
                   help="score threshold for drawn and reported instances")
    p.add_argument("--slice_infer", action="store_true",
                   help="predict overlapping tiles and merge them (small objects)")
    p.add_argument("--slice_size", nargs=2, type=int, default=[640, 640], metavar=("H", "W"),
                   help="tile size (default 640 640)")
    p.add_argument("--overlap_ratio", nargs=2, type=float, default=[0.25, 0.25],
                   metavar=("RH", "RW"), help="tile overlap, height and width (default 0.25 0.25)")
    p.add_argument("--combine_method", default="nms", choices=("nms", "nmm", "concat"),
                   help="merge tile duplicates: keep the best, merge them, or keep all")
    p.add_argument("--match_threshold", type=_fraction, default=0.6,
                   help="mask overlap from which two instances are duplicates (default 0.6)")
    p.add_argument("--match_metric", default="ios", choices=("ios", "iou"),
                   help="overlap measure: intersection over the smaller mask, or IoU")
    p.add_argument("--slice_whole_image", action="store_true",
                   help="with --slice_infer, also predict the whole image and merge it in")


def _infer(args: argparse.Namespace, cfg: Config) -> int:
    from .infer import Predictor, list_images

    images = list_images(args.infer_img, args.infer_dir)
    predictor = Predictor(_model_with_weights(cfg, "infer"), threshold=args.draw_threshold,
                          image_size=cfg.model.eval_size)
    output_dir = args.output_dir or "output"
    sliced = functools.partial(
        predictor.predict_sliced, slice_size=args.slice_size, overlap_ratio=args.overlap_ratio,
        combine_method=args.combine_method, match_threshold=args.match_threshold,
        match_metric=args.match_metric, whole_image=args.slice_whole_image)
    for path, saved, instances in predictor.save_drawings(
            images, output_dir, sliced if args.slice_infer else None):
        print(f"{path}: {len(instances['scores'])} instances -> {saved}")
    return 0


# ---------------------------------------------------------------- export
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="batch size of the exported model")
    p.add_argument("--trt", action="store_true",
                   help="the seed's trt=True: im_shape/scale_factor baked in, simplified ONNX, "
                        "and a TensorRT FP16 engine when a GPU and tensorrt are present")
    p.add_argument("--dynamic_batch", action="store_true",
                   help="one ONNX file for every batch size (baked in; --batch is ignored)")
    p.add_argument("--int8", action="store_true",
                   help="also an int8 ONNX file (deploy --run_mode ort_int8), calibrated on "
                        "the first 16 training images")


def _export(args: argparse.Namespace, cfg: Config) -> int:
    from .export import build_trt_engine, export_onnx, tensorrt_available

    model = _model_with_weights(cfg, "export")
    out_dir = args.output_dir or "exports"
    name = f"mask_rtdetr_{cfg.model.arch.lower()}"
    onnx_path = export_onnx(model, out_dir, name, args.batch, bake=args.trt,
                            dynamic_batch=args.dynamic_batch)
    paddle_dir = str(onnx_path).replace(".onnx", "_paddle")
    print(f"paddle inference model: {paddle_dir}")
    baked = args.trt or args.dynamic_batch
    print(f"onnx (opset 16, simplified{', inputs baked' if baked else ''}): {onnx_path}")
    files = {"paddle": os.path.basename(paddle_dir), "onnx": onnx_path.name}
    if args.int8:
        files["onnx_int8"] = _export_int8(cfg, onnx_path).name
    _write_infer_cfg(cfg, out_dir, files, None if args.dynamic_batch else args.batch, baked)
    if args.trt:
        reason = tensorrt_available()
        if reason:
            print(f"tensorrt engine skipped: {reason}")
        else:
            print(f"tensorrt fp16 engine: {build_trt_engine(onnx_path, fp16=True)}")
    return 0


def _export_int8(cfg: Config, onnx_path):
    """The int8 QDQ file beside `onnx_path`, calibrated on the first 16 training images."""
    from .data import build_dataset
    from .export import calibration_inputs, quantize_onnx

    records = build_dataset(cfg.data, "train").records[:16]
    path = quantize_onnx(onnx_path, str(onnx_path).replace(".onnx", "_int8.onnx"),
                         calibration_inputs([r["im_file"] for r in records], onnx_path))
    print(f"onnx int8 (QDQ, for ort_int8 and OpenVINO): {path}")
    return path


def _write_infer_cfg(cfg: Config, out_dir: str, files: Dict[str, str], batch, baked: bool):
    """infer_cfg.json for `mrtdetr deploy`: class names from the val annotations, if there."""
    from .data.coco import load_coco
    from .export.deploy import write_infer_cfg

    anno = os.path.join(cfg.data.dataset_dir, cfg.data.val_anno_path)
    names, ids = [str(i) for i in range(cfg.model.num_classes)], []
    if os.path.isfile(anno):
        coco = load_coco(anno)
        ids = sorted(coco.getCatIds())
        names = [coco.cats[c]["name"] for c in ids]
    path = write_infer_cfg(out_dir, files, cfg.model.eval_size, batch, baked, names, ids,
                           cfg.model.arch)
    print(f"deploy config: {path}")


# ---------------------------------------------------------------- deploy (no training config)
def _deploy_args(p: argparse.ArgumentParser) -> None:
    from .export.deploy import RUN_MODES

    p.add_argument("--model_dir", required=True, help="a folder `mrtdetr export` wrote")
    p.add_argument("--image_file", help="one image to run on")
    p.add_argument("--image_dir", help="a folder of images to run on")
    p.add_argument("--run_mode", default="paddle", choices=RUN_MODES)
    p.add_argument("--threshold", type=_fraction, default=0.5, help="score threshold")
    p.add_argument("--run_benchmark", action="store_true",
                   help="time the model on the first image (JSON line: median, IQR, machine)")
    p.add_argument("--cpu_threads", type=int, default=0, help="CPU threads (0: all)")


def _deploy(args: argparse.Namespace, cfg: None) -> int:
    from .export.deploy import deploy
    from .infer import list_images

    if bool(args.image_file) == bool(args.image_dir):
        raise UserError("give one of --image_file IMAGE or --image_dir FOLDER")
    if args.image_file and not os.path.isfile(args.image_file):
        raise FileNotFoundError(f"--image_file not found: {args.image_file}")
    if args.image_dir and not os.path.isdir(args.image_dir):
        raise NotADirectoryError(f"--image_dir is not a folder: {args.image_dir}")
    images = list_images(args.image_file, args.image_dir)
    try:
        summary = deploy(args.model_dir, images, args.run_mode, args.threshold,
                         args.output_dir or "output", args.run_benchmark, args.cpu_threads)
    except RuntimeError as err:  # e.g. trt_fp16 without a GPU
        return _fail(str(err))
    for saved in summary["drawn"]:
        print(f"drawn: {saved}")
    print(f"COCO results: {summary['results']}")
    if "benchmark" in summary:
        print(json.dumps(summary["benchmark"]))
    return 0


def _trt_option(argv: List[str]) -> List[str]:
    """PaddleDetection spells the flag `-o trt=True`: accept that too."""
    return ["--trt" if a.lower() in ("trt=true", "trt=1") else a for a in argv]


# name -> (help, add arguments, run).
COMMANDS: Dict[str, Tuple[str, Callable, Callable]] = {
    "train": ("train a model (tools/train.py)", _train_args, _train),
    "eval": ("COCO box and mask AP of trained weights (tools/eval.py)", lambda p: None, _eval),
    "infer": ("draw predicted instances on images (tools/infer.py)", _infer_args, _infer),
    "export": ("Paddle inference model + ONNX (+ TensorRT) in exports/ (tools/export_model.py)",
               _export_args, _export),
    "deploy": ("run an exported folder on images (deploy/python/infer.py); no config needed",
               _deploy_args, _deploy),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mrtdetr", description="Mask RT-DETR: train, evaluate, infer.")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}",
                                     parser_class=_Parser)
    commands.required = True
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", required=name != "deploy",
                       help="YAML config (e.g. configs/tiny_shapes.yml) or a preset name")
        p.add_argument("-o", "--opt", nargs="+", action="extend", metavar="KEY=VALUE",
                       help="override config fields, e.g. -o epochs=1 weights=PATH_OR_URL")
        p.add_argument("--output_dir", help="where results are written")
        add_args(p)
    return parser


def _os_error(err: OSError) -> str:
    """One line for a failed file operation: the file, then why; a full disk named as such."""
    where = f"{err.filename}: " if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}no space left on device (ENOSPC): free some space or write elsewhere"
    return f"{where}{err.strerror}" if err.strerror else str(err)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `mrtdetr` console script; returns the exit status.

    A user's mistake (UserError) and a failed file operation (OSError: missing file, no
    permission, full disk) print one line and exit 2; anything else is a bug and keeps its
    traceback."""
    args = build_parser().parse_args(_trt_option(sys.argv[1:] if argv is None else argv))
    setup()  # a program's start: quiet paddle, every core (or MRTDETR_THREADS)
    try:
        cfg = _config(args) if args.command != "deploy" else None
        return COMMANDS[args.command][2](args, cfg)
    except UserError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(_os_error(err))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
