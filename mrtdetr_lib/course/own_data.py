"""Chapter 07's helpers: real images as an annotation tool leaves them, a fine-tuning config, and
a look at what the model got wrong.

The nuclei image is one 512 x 512 fluorescence image with its 125 instance labels (2018 Data
Science Bowl, BBBC038, CC0; `data_scripts/fetch_real_data.py` fetches the original files from the
stardist 0.9.2 wheel, and a lossless PNG copy ships with the course in `data/nuclei/`). One image
is little to train on, so `write_nuclei_folders` holds out one corner as the validation image and
cuts overlapping tiles from the rest, written in the VOC masks layout an annotation tool exports
(`SegmentationObject` instance ids, `SegmentationClass` class ids, `JPEGImages`), the input of
`data_scripts/x2coco.py --dataset_type masks`.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..config import Config, get_config, load_config, save_config
from ..data import build_loader
from ..data.convert import convert
from ..engine import Trainer, evaluate_predictor, read_log, summary
from ..engine.log import write_log
from ..export import OnnxPredictor, beside, calibration_inputs, export_onnx, quantize_onnx
from ..files import atomic_write
from ..model.detr import build_model
from ..weights import COURSE_CHECKPOINT, load_pretrained, save_safetensors
from .deploy import on_batches
from .weights import logged_steps

PathLike = Union[str, Path]
SHIPPED_NUCLEI = Path(__file__).resolve().parent / "data" / "nuclei"
# a longer fine-tune of the course checkpoint on the nuclei (bench/own_data.py --ship): the
# EMA weights where it stopped, the config, the log and the benchmark's JSON line
FINETUNED = SHIPPED_NUCLEI / "finetuned" / "model.safetensors"
LAYOUT = ("JPEGImages", "SegmentationObject", "SegmentationClass")
MIN_PIXELS = 20  # a nucleus cut by a tile border to fewer pixels is left out (a sliver)
Box = Tuple[int, int, int, int]  # y0, x0, y1, x1 in pixels


def read_nuclei(folder: Optional[PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(image uint8 [H, W], labels int32 [H, W]: 0 background, k instance k), from the fetched
    img2d.tif / mask2d.tif in `folder`, or from the course's shipped copy."""
    folder = Path(folder) if folder is not None else None
    image_file, label_file = ((folder / "img2d.tif", folder / "mask2d.tif") if folder
                              else (SHIPPED_NUCLEI / "image.png", SHIPPED_NUCLEI / "labels.png"))
    image = cv2.imread(str(image_file), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)
    for path, array in ((image_file, image), (label_file, labels)):
        if array is None:
            raise FileNotFoundError(f"cannot read {path} (run data_scripts/fetch_real_data.py)")
    if image.shape != labels.shape:
        raise ValueError(f"{image_file} is {image.shape}, {label_file} is {labels.shape}")
    if image.max() > 255:  # the tif is uint16 holding 8-bit values; stretch a true 16-bit one
        image = image.astype(np.float64) * 255 / image.max()
    return image.astype(np.uint8), labels.astype(np.int32)


def tile_origins(height: int, width: int, tile: int, stride: int,
                 avoid: Optional[Box] = None) -> List[Tuple[int, int]]:
    """(y, x) of every tile x tile window on a stride grid that does not overlap `avoid`."""
    def starts(size: int) -> List[int]:
        return sorted(set(list(range(0, size - tile + 1, stride)) + [size - tile]))

    origins = [(y, x) for y in starts(height) for x in starts(width)]
    if avoid is None:
        return origins
    y0, x0, y1, x1 = avoid
    return [(y, x) for y, x in origins
            if y + tile <= y0 or y >= y1 or x + tile <= x0 or x >= x1]


def renumber(labels: np.ndarray, min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """Instance ids -> 1..n in order of first appearance, dropping those under `min_pixels`
    (a crop's slivers); uint8, as VOC's SegmentationObject PNGs (255 would be void)."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    kept = ids[counts >= min_pixels]
    if len(kept) > 254:
        raise ValueError(f"{len(kept)} instances do not fit an 8-bit instance PNG (max 254)")
    table = np.zeros(labels.max() + 1, np.uint8)
    table[kept] = np.arange(1, len(kept) + 1)
    return table[labels]


def write_masks_sample(folder: PathLike, name: str, image: np.ndarray,
                       labels: np.ndarray) -> int:
    """One image in the VOC masks layout under `folder`; returns its number of instances."""
    folder = Path(folder)
    for part in LAYOUT:
        (folder / part).mkdir(parents=True, exist_ok=True)
    objects = renumber(labels)
    cv2.imwrite(str(folder / "JPEGImages" / f"{name}.png"), image)
    cv2.imwrite(str(folder / "SegmentationObject" / f"{name}.png"), objects)
    cv2.imwrite(str(folder / "SegmentationClass" / f"{name}.png"), (objects > 0).astype(np.uint8))
    return int(objects.max())


def write_nuclei_folders(out: PathLike, tile: int = 128, stride: int = 32, held_out: int = 256,
                         folder: Optional[PathLike] = None) -> Dict[str, Dict[str, int]]:
    """The annotation tool's folders `out/train` (overlapping tile x tile crops that avoid the
    bottom-right held_out x held_out corner) and `out/val` (that corner cut into tile x tile
    crops that do not overlap, so the model is scored on inputs like those it trains on), and
    `out/class_names.txt`; returns {split: {file stem: instances}}. A nucleus cut by a border
    is in both crops, in part."""
    image, labels = read_nuclei(folder)
    height, width = image.shape
    corner = (height - held_out, width - held_out, height, width)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # a re-run with other tiles leaves no stale files
    written: Dict[str, Dict[str, int]] = {"train": {}, "val": {}}
    y0, x0 = corner[:2]
    val_origins = [(y0 + y, x0 + x) for y, x in tile_origins(held_out, held_out, tile, tile)]
    for split, origins in (("train", tile_origins(height, width, tile, stride, avoid=corner)),
                           ("val", val_origins)):
        for y, x in origins:
            crop = (slice(y, y + tile), slice(x, x + tile))
            name = f"nuclei{'_val' if split == 'val' else ''}_y{y:03d}_x{x:03d}"
            written[split][name] = write_masks_sample(out / split, name, image[crop],
                                                      labels[crop])
    (out / "class_names.txt").write_text("background\nnucleus\n")
    return written


def x2coco_commands(tool_dir: PathLike, dataset_dir: PathLike) -> List[List[str]]:
    """The two `x2coco.py --dataset_type masks` calls (arguments) that turn the tool's train and
    val folders into one COCO data set (train/, val/, annotations/instance_*.json)."""
    tool_dir = Path(tool_dir)
    commands = []
    for split, proportions in (("train", ("1", "0")), ("val", ("0", "1"))):
        commands.append(["--dataset_type", "masks",
                         "--json_input_dir", str(tool_dir / split / "SegmentationObject"),
                         "--class_input_dir", str(tool_dir / split / "SegmentationClass"),
                         "--image_input_dir", str(tool_dir / split / "JPEGImages"),
                         "--labels", str(tool_dir / "class_names.txt"),
                         "--output_dir", str(dataset_dir),
                         "--train_proportion", proportions[0], "--val_proportion", proportions[1]])
    return commands


def convert_tool_folders(tool_dir: PathLike, dataset_dir: PathLike
                         ) -> Dict[str, Tuple[int, int]]:
    """What the two x2coco.py calls of `x2coco_commands` do, in Python: {split: (images,
    objects)}."""
    tool_dir, counts = Path(tool_dir), {}
    for split, proportions in (("train", (1.0, 0.0, 0.0)), ("val", (0.0, 1.0, 0.0))):
        part = tool_dir / split
        counts.update({k: v for k, v in convert(
            "masks", str(part / "SegmentationObject"), str(part / "JPEGImages"), str(dataset_dir),
            proportions, labels=str(tool_dir / "class_names.txt"),
            class_input_dir=str(part / "SegmentationClass")).items() if k == split})
    return counts


def break_boxes(anno_path: PathLike, out_path: PathLike, image_index: int = 1,
                shift: Tuple[float, float] = (192.0, 160.0)) -> Tuple[int, int]:
    """A copy of a COCO file with one image's boxes moved by `shift` (x, y): the boxes of a tiling
    script that forgot to subtract the tile's origin. Returns (image id, boxes moved)."""
    data = json.loads(Path(anno_path).read_text())
    image_id = sorted(im["id"] for im in data["images"])[image_index]
    moved = 0
    for ann in data["annotations"]:
        if ann["image_id"] == image_id:
            ann["bbox"] = [ann["bbox"][0] + shift[0], ann["bbox"][1] + shift[1], *ann["bbox"][2:]]
            moved += 1
    Path(out_path).write_text(json.dumps(data))
    return image_id, moved


def finetune_config(dataset_dir: PathLike, output_dir: PathLike, quick: bool,
                    num_classes: int = 1, steps: Optional[int] = None) -> Config:
    """The fine-tuning Config for a data set written by x2coco.py. Quick mode: the course
    checkpoint's model (`tiny`, 30 queries, `pretrain_weights: course`) on the nuclei: 128 px
    tiles trained at 224-288 px and evaluated at 256 px, so every nucleus reaches the model twice
    as large. (After 400 steps, the held-out corner as one 256 px image at 512 px scored 0.018
    mask AP where its four tiles at 256 px scored 0.48, with the same weights: a size far from
    the training sizes puts the encoder's position embeddings where training never was.) Full
    mode: `l` from the official COCO weights (`pretrain_weights: l`) at PaddleDetection's sizes.
    The Trainer re-initialises the class tensors."""
    if quick:
        cfg = load_config(str(COURSE_CHECKPOINT.parent / "config.yml"))
        eval_size, train_sizes, weights = 256, [224, 256, 288], "course"  # tiles at 2x
        cfg.train.base_lr, cfg.train.warmup_steps = 4e-4, 20
        cfg.train.ema_decay, cfg.train.ema_ramp_steps = 0.99, 20
    else:
        cfg = get_config("l")
        eval_size, train_sizes, weights = 640, cfg.data.train_sizes, "l"
        cfg.train.warmup_steps = 200
    cfg.model.num_classes, cfg.model.eval_size = num_classes, (eval_size, eval_size)
    data = cfg.data
    data.dataset_dir = str(dataset_dir)
    data.train_image_dir, data.val_image_dir = "train", "val"
    data.train_anno_path = "annotations/instance_train.json"
    data.val_anno_path = "annotations/instance_val.json"
    data.train_sizes = list(train_sizes)
    data.batch_size, data.num_workers, data.max_images = 4, 0, None
    train = cfg.train
    train.pretrain_weights, train.backbone_weights, train.resume = weights, None, None
    train.output_dir, train.eval, train.lr_schedule = str(output_dir), True, "constant"
    train.max_iters = steps or (60 if quick else 3000)
    train.epochs, train.log_iter = 10_000, 10
    return cfg


def fine_tune(cfg: Config, minutes: Optional[float] = None,
              callbacks: Sequence[Callable] = (), progress: bool = True) -> Trainer:
    """Train `cfg` to its `max_iters`, or until `minutes` have passed (the run then stops
    between two steps and saves its checkpoint); returns the Trainer (`trainer.evaluate()`
    scores where it stopped)."""
    trainer = Trainer(cfg, callbacks=callbacks, progress=progress)
    deadline = time.time() + 60 * minutes if minutes else None
    for _ in trainer.run():
        if deadline and time.time() > deadline:
            break  # closing the generator saves the checkpoint (Trainer.run)
    return trainer


def ship_finetuned(trainer: Trainer, result: Dict[str, Any], out: Path = FINETUNED.parent
                   ) -> Path:
    """Package a finished fine-tune for chapter 07's quick mode: the EMA weights where it stopped
    (what the benchmark scored, not the best evaluation's), its config, its log and `result`
    (the benchmark's JSON line) as meta.json. Returns the weights' path."""
    out.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors(trainer.weights(), out / FINETUNED.name)
    weights.chmod(0o644)  # safetensors writes 0600; the package is read by everyone
    save_config(trainer.cfg, str(out / "config.yml"))
    log = Path(trainer.cfg.train.output_dir) / "train_log.jsonl"
    write_log(out / "train_log.jsonl", logged_steps(read_log(str(log)),
                                                    trainer.cfg.train.log_iter))
    meta = json.dumps(result, indent=1) + "\n"
    atomic_write(out / "meta.json", lambda tmp: Path(tmp).write_text(meta))
    return weights


def finetuned_model(cfg: Config, weights: PathLike = FINETUNED) -> Any:
    """The model of `cfg` with the shipped nuclei fine-tune (or `weights`) loaded, in eval mode."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"no fine-tuned weights at {weights} (bench/own_data.py --ship "
                                "writes them)")
    model = build_model(cfg.model)
    load_pretrained(model, str(weights), progress=False)
    model.eval()
    return model


def export_int8(model: Any, cfg: Config, out_dir: PathLike, calibration_images: Sequence[str]
                ) -> Tuple[Path, Path]:
    """(fp32, int8) ONNX files of an eval model at its eval size, batch 1; int8 is static,
    calibrated on `calibration_images` (training images, never the ones scored)."""
    fp32 = export_onnx(model, out_dir, "own_data", batch=1, size=tuple(cfg.model.eval_size))
    int8 = quantize_onnx(fp32, beside(fp32, "_int8.onnx"),
                         calibration_inputs(list(calibration_images), fp32))
    return fp32, int8


def score_onnx(onnx_path: PathLike, cfg: Config) -> Dict[str, float]:
    """COCO AP (mask_AP, mask_APs, bbox_AP, ...) of an ONNX file on cfg's val split."""
    loader = build_loader(cfg, "val", num_workers=0)
    predictor = on_batches(OnnxPredictor(onnx_path))
    return summary(evaluate_predictor(predictor, loader, loader.dataset.coco,
                                      loader.dataset.cat_ids, progress=False))


def mask_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[P, H, W] and [G, H, W] bool masks -> [P, G] IoU (pycocotools, as COCOeval computes it)."""
    if not len(pred) or not len(gt):
        return np.zeros((len(pred), len(gt)))
    def encode(masks: np.ndarray) -> list:
        return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return mask_util.iou(encode(pred), encode(gt), [0] * len(gt))


def failures(pred_masks: np.ndarray, gt_masks: np.ndarray, iou: float = 0.5
             ) -> Dict[str, np.ndarray]:
    """Greedy matching at `iou` (predictions in the given order, best score first):
    {"missed": gt indices no prediction found, "spurious": predictions matching no object,
    "matched_iou": IoU of each matched pair}."""
    ious = mask_ious(pred_masks, gt_masks)
    taken, spurious, matched = set(), [], []
    for p in range(len(pred_masks)):
        free = [g for g in np.argsort(-ious[p]) if g not in taken and ious[p, g] >= iou]
        if free:
            taken.add(free[0])
            matched.append(ious[p, free[0]])
        else:
            spurious.append(p)
    missed = [g for g in range(len(gt_masks)) if g not in taken]
    return {"missed": np.array(missed, int), "spurious": np.array(spurious, int),
            "matched_iou": np.array(matched)}


def instance_masks(labels: np.ndarray) -> np.ndarray:
    """Label image [H, W] (0 background) -> [N, H, W] bool, one mask per id, ids sorted."""
    ids = np.unique(labels[labels > 0])
    return labels[None] == ids[:, None, None]


def outline(image: np.ndarray, masks: Sequence[np.ndarray], colour: Sequence[int],
            thickness: int = 1) -> np.ndarray:
    """RGB copy of `image` with each mask's outline drawn in `colour`."""
    canvas = np.ascontiguousarray(image).copy()
    for mask in masks:
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colour), thickness)
    return canvas
