"""Every option of the course in one place: dataclass configs, presets, YAML and `-o` overrides.

Presets `s m l x h` mirror PaddleDetection's `configs/mask_rtdetr/mask_rtdetr_hgnetv2_*_6x_coco.yml`
(after `_BASE_` merging); `tiny` is the course's CPU model trained on the synthetic shapes data.
Only `build_model`, `build_criterion`, the data builders and the Trainer read these objects; layers
take explicit keyword arguments.
"""

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import yaml

from .errors import UserError


@dataclass
class ModelConfig:
    """MaskRTDETR: PPHGNetV2 backbone, MaskHybridEncoder, MaskRTDETRTransformer, post-process."""

    arch: str = "L"  # PPHGNetV2 arch: S, M, L, X, H, or T (the course's tiny backbone)
    num_classes: int = 80
    hidden_dim: int = 256  # decoder width (shared key: 256 for every official size)
    num_prototypes: int = 32  # mask prototypes = mask embedding size
    # (h, w) of eval / test inputs: the val data, Predictor and export use it; None = any size
    eval_size: Optional[Tuple[int, int]] = (640, 640)
    # backbone (PPHGNetV2)
    return_idx: List[int] = field(default_factory=lambda: [0, 1, 2, 3])
    lr_mult_list: List[float] = field(default_factory=lambda: [0.0, 0.05, 0.05, 0.05, 0.05])
    freeze_stem_only: bool = True
    freeze_at: int = 0
    freeze_norm: bool = True
    # neck (MaskHybridEncoder)
    encoder_hidden_dim: int = 256
    use_encoder_idx: List[int] = field(default_factory=lambda: [3])  # indices of [4,8,16,32]
    num_encoder_layers: int = 1
    encoder_nhead: int = 8
    encoder_dim_feedforward: int = 1024
    expansion: float = 1.0
    depth_mult: float = 1.0
    mask_feat_channels: List[int] = field(default_factory=lambda: [64, 64])
    pe_temperature: int = 10000
    # transformer (MaskRTDETRTransformer)
    num_queries: int = 300
    num_levels: int = 3
    num_decoder_points: int = 4
    nhead: int = 8
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    mask_enhanced: bool = True
    eval_idx: int = -1
    # post-process (DETRPostProcess)
    num_top_queries: int = 100
    mask_threshold: float = 0.5


# The five loss and matching-cost terms (PaddleDetection's `loss_{term}` keys) and their default
# weights: ppdet's Mask RT-DETR configs give `loss_coeff` and `matcher_coeff` these same numbers.
TERMS = ("class", "bbox", "giou", "mask", "dice")
COEFF: Dict[str, float] = {"class": 4, "bbox": 5, "giou": 2, "mask": 5, "dice": 5}


@dataclass
class LossConfig:
    """MaskDINOLoss and its HungarianMatcher (PaddleDetection's MaskDINOHead.loss)."""

    loss_coeff: Dict[str, float] = field(default_factory=lambda: dict(COEFF))
    matcher_coeff: Dict[str, float] = field(default_factory=lambda: dict(COEFF))
    aux_loss: bool = True
    use_vfl: bool = True
    vfl_iou_type: str = "mask"  # "mask" or "bbox": the IoU that the varifocal target follows
    num_sample_points: int = 12544
    oversample_ratio: float = 3.0
    important_sample_ratio: float = 0.75
    alpha: float = 0.25
    gamma: float = 2.0


@dataclass
class DataConfig:
    """Where the COCO-format data lives and how batches are made (PaddleDetection's readers)."""

    dataset_dir: str = "dataset/coco"
    train_image_dir: str = "train2017"
    train_anno_path: str = "annotations/instances_train2017.json"
    val_image_dir: str = "val2017"
    val_anno_path: str = "annotations/instances_val2017.json"
    batch_size: int = 4
    eval_batch_size: int = 1
    num_workers: int = 4
    train_sizes: List[int] = field(
        default_factory=lambda: [480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800])
    allow_empty: bool = False  # keep training images without annotations
    max_images: Optional[int] = None  # use only the first N images of each split (quick runs)
    augment: bool = True  # False: only flip + multi-scale resize (no distort, expand, crop)


@dataclass
class TrainConfig:
    """Optimiser, schedule, EMA, AMP, evaluation and checkpoints (ppdet's optimizer_6x)."""

    epochs: int = 72
    max_iters: Optional[int] = None  # stop after at most this many steps; None: epochs decide
    base_lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 2000
    warmup_start_factor: float = 0.001
    lr_schedule: str = "constant"  # after warm-up: "constant" (ppdet's 6x) or "cosine" to 0
    lr_decay_start: float = 0.0  # cosine: the share of the run at full rate before it decays
    clip_grad_norm: float = 0.1
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_filter_no_grad: bool = True
    ema_ramp_steps: int = 2000  # time constant of the decay's ramp (ppdet: fixed 2000)
    amp: bool = False
    eval: bool = False  # evaluate after every `snapshot_epoch` epochs and keep the best
    target_metrics: str = "mask"  # "mask" or "bbox": the AP that picks the best checkpoint
    snapshot_epoch: int = 1
    log_iter: int = 20
    output_dir: str = "output"
    seed: int = 0
    # whole model loaded before training: a path, a URL, an official size (l) or "course";
    # the class tensors are re-initialised when num_classes differs (fine-tuning)
    pretrain_weights: Optional[str] = None
    # ImageNet PP-HGNetV2 for the backbone alone (ppdet's start of a COCO run): a path, a URL or
    # a size s/m/l/x/h of weights.PRETRAINED_BACKBONES
    backbone_weights: Optional[str] = None
    weights: Optional[str] = None  # path or URL of the weights to evaluate / infer / export
    resume: Optional[str] = None  # checkpoint to continue from


@dataclass
class Config:
    """The whole course configuration: one object for the library, the CLI and the notebooks."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- presets
# Values that differ from ModelConfig's defaults (which are L's), from the five yml files.
_MODEL_PRESETS: Dict[str, Dict[str, Any]] = {
    "s": dict(arch="S", num_prototypes=128, lr_mult_list=[0.0, 0.1, 0.1, 0.1, 0.1],
              use_encoder_idx=[2], expansion=0.5, mask_feat_channels=[64, 32]),
    "m": dict(arch="M", num_prototypes=128, lr_mult_list=[0.0, 0.1, 0.1, 0.1, 0.1],
              use_encoder_idx=[2], expansion=0.5, mask_feat_channels=[64, 64]),
    "l": dict(arch="L"),
    "x": dict(arch="X", num_prototypes=128, lr_mult_list=[0.0, 0.01, 0.01, 0.01, 0.01],
              encoder_hidden_dim=384, encoder_dim_feedforward=2048,
              mask_feat_channels=[128, 128]),
    "h": dict(arch="H", num_prototypes=128, lr_mult_list=[0.0, 0.01, 0.01, 0.01, 0.01],
              encoder_hidden_dim=512, encoder_dim_feedforward=2048, num_encoder_layers=2,
              mask_feat_channels=[256, 128]),
    # The course's CPU model: same modules, small widths, 256 px inputs, 4 shape classes.
    "tiny": dict(arch="T", num_classes=4, hidden_dim=64, num_prototypes=16, eval_size=(256, 256),
                 lr_mult_list=[1.0, 1.0, 1.0, 1.0, 1.0], freeze_stem_only=True, freeze_at=-1,
                 freeze_norm=False, encoder_hidden_dim=64, encoder_nhead=4,
                 encoder_dim_feedforward=128, expansion=0.5, depth_mult=0.34,
                 mask_feat_channels=[32, 32], num_queries=100, nhead=4, num_decoder_layers=3,
                 dim_feedforward=256, num_denoising=50, num_top_queries=50),
}
ARCHS = tuple(_MODEL_PRESETS)

# Data and training presets: the official sizes keep the COCO defaults above.
_DATA_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(dataset_dir="dataset/shapes", train_image_dir="train",
                 train_anno_path="instances_train.json", val_image_dir="val",
                 val_anno_path="instances_val.json", batch_size=4, num_workers=2,
                 train_sizes=[224, 256, 288]),
}
# 12544 points = 112^2 suit 160^2 mask logits (640 px input); tiny's 64^2 masks (256 px) get the
# same density with 2048, and the matcher's point sampling stops dominating a CPU step.
_LOSS_PRESETS: Dict[str, Dict[str, Any]] = {"tiny": dict(num_sample_points=2048)}
_TRAIN_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(epochs=30, base_lr=4e-4, warmup_steps=100, clip_grad_norm=0.1, ema_decay=0.999,
                 output_dir="output/tiny_shapes", log_iter=10),
}


def model_config(arch: str = "l", **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset ("s", "m", "l", "x", "h", "tiny") with fields overridden."""
    key = arch.lower()
    if key not in _MODEL_PRESETS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cfg = ModelConfig(**_MODEL_PRESETS[key])
    return _replace_checked(cfg, overrides)


def get_config(preset: str = "l") -> Config:
    """The full Config of a preset: COCO for the five official sizes, shapes data for `tiny`."""
    key = preset.lower()
    return Config(model=model_config(key), loss=LossConfig(**_LOSS_PRESETS.get(key, {})),
                  data=DataConfig(**_DATA_PRESETS.get(key, {})),
                  train=TrainConfig(**_TRAIN_PRESETS.get(key, {})))


def quick_mode() -> bool:
    """True when `MRTDETR_QUICK=1`: notebooks and CLIs take the small path (tests set it)."""
    return os.environ.get("MRTDETR_QUICK", "0").lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------- checked updates
def _field_types(obj: Any) -> Dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _check_value(section: str, name: str, value: Any, default: Any) -> Any:
    """Coerce YAML/CLI values to the type of the field's default; fail with the field's name."""
    if default is None or value is None:
        return tuple(value) if isinstance(value, list) and name == "eval_size" else value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{section}.{name} must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{section}.{name} must be a number, got {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise UserError(f"{section}.{name} must be an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{section}.{name} must be a list, got {value!r}")
        return type(default)(value)
    if isinstance(default, dict):
        if not isinstance(value, dict) or set(value) - set(default):
            raise UserError(f"{section}.{name} must be a mapping with keys from "
                            f"{sorted(default)}, got {value!r}")
        return {**default, **value}
    if isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"{section}.{name} must be a string, got {value!r}")
    return value


def _replace_checked(obj: Any, updates: Dict[str, Any], section: str = "model") -> Any:
    """dataclasses.replace with an error naming the valid keys for an unknown one."""
    fields = _field_types(obj)
    unknown = [k for k in updates if k not in fields]
    if unknown:
        raise UserError(f"unknown {section} key(s) {unknown}; valid keys: {', '.join(fields)}")
    checked = {k: _check_value(section, k, v, getattr(obj, k)) for k, v in updates.items()}
    return dataclasses.replace(obj, **checked)


def _without_data_eval_size(cfg: Config, updates: Dict[str, Any]) -> Dict[str, Any]:
    """Old configs gave the eval size twice, `data.eval_size` next to `model.eval_size`: accept
    the data one when it equals the model's (with a FutureWarning), refuse it otherwise."""
    data, model = updates.get("data"), updates.get("model")
    if not isinstance(data, dict) or "eval_size" not in data:
        return updates
    model_size = cfg.model.eval_size
    if isinstance(model, dict) and "eval_size" in model:
        model_size = model["eval_size"]
    if not model_size or list(data["eval_size"] or []) != list(model_size):
        raise UserError(f"data.eval_size {data['eval_size']} differs from model.eval_size "
                        f"{list(model_size) if model_size else None}: model.eval_size is the "
                        "one eval size now (it sizes the val data too); remove data.eval_size")
    warnings.warn("data.eval_size is deprecated: model.eval_size sizes the val data; remove "
                  "data.eval_size from the config", FutureWarning, stacklevel=3)
    return {**updates, "data": {k: v for k, v in data.items() if k != "eval_size"}}


def update_config(cfg: Config, updates: Dict[str, Any]) -> Config:
    """Apply a nested mapping {section: {key: value}} to a Config, checking every key and type,
    then every range (`validate`)."""
    updates = _without_data_eval_size(cfg, updates)
    sections = _field_types(cfg)
    unknown = [k for k in updates if k not in sections]
    if unknown:
        raise UserError(f"unknown config section(s) {unknown}; valid: {', '.join(sections)}")
    for name, values in updates.items():
        if not isinstance(values, dict):
            raise UserError(f"config section {name!r} must be a mapping, got {values!r}")
        cfg = dataclasses.replace(cfg, **{name: _replace_checked(getattr(cfg, name), values,
                                                                 name)})
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- ranges
def _at_least(low: int) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
            f"an integer >= {low}")


def _within(low: float, high: float, open_high: bool = False) -> Tuple[Callable[[Any], bool], str]:
    if open_high:
        return (lambda v: low <= v < high), f"in [{low}, {high})"
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


def _one_of(*choices: Any) -> Tuple[Callable[[Any], bool], str]:
    names = [repr(c) for c in choices]  # 'mask' or 'bbox'; 'S', 'M', ... or 'T'
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return (lambda v: v in choices), text


_POSITIVE = ((lambda v: v > 0), "> 0")
_NON_NEGATIVE = ((lambda v: v >= 0), ">= 0")  # NaN fails every comparison: refused too
_SIZE = ((lambda v: len(v) == 2 and all(isinstance(x, int) and x > 0 and x % 32 == 0 for x in v)),
         "[h, w]: two positive multiples of 32 (the backbone's largest stride)")
_SIZES = ((lambda v: len(v) > 0 and all(isinstance(x, int) and x > 0 for x in v)),
          "a non-empty list of positive integers")
_COEFFS = ((lambda v: all(c >= 0 for c in v.values())), "a mapping of weights >= 0")
# Every field with a range, with what it must be. OPTIONAL fields may also be None (null).
RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "model.arch": _one_of("S", "M", "L", "X", "H", "T"), "model.num_classes": _at_least(1),
    "model.hidden_dim": _at_least(1), "model.num_prototypes": _at_least(1),
    "model.eval_size": _SIZE, "model.encoder_hidden_dim": _at_least(4),
    "model.num_encoder_layers": _at_least(0), "model.encoder_nhead": _at_least(1),
    "model.encoder_dim_feedforward": _at_least(1), "model.expansion": _POSITIVE,
    "model.depth_mult": _POSITIVE, "model.num_queries": _at_least(1),
    "model.num_levels": _one_of(3), "model.num_decoder_points": _at_least(1),
    "model.nhead": _at_least(1), "model.num_decoder_layers": _at_least(1),
    "model.dim_feedforward": _at_least(1), "model.num_denoising": _at_least(0),
    "model.label_noise_ratio": _within(0, 1), "model.box_noise_scale": _NON_NEGATIVE,
    "model.num_top_queries": _at_least(1), "model.mask_threshold": _within(0, 1),
    "loss.loss_coeff": _COEFFS, "loss.matcher_coeff": _COEFFS,
    "loss.vfl_iou_type": _one_of("mask", "bbox"), "loss.num_sample_points": _at_least(1),
    "loss.oversample_ratio": ((lambda v: v >= 1), ">= 1"),
    "loss.important_sample_ratio": _within(0, 1), "loss.alpha": _within(0, 1),
    "loss.gamma": _NON_NEGATIVE,
    "data.batch_size": _at_least(1), "data.eval_batch_size": _at_least(1),
    "data.num_workers": _at_least(0), "data.train_sizes": _SIZES,
    "data.max_images": _at_least(1),
    "train.epochs": _at_least(1), "train.max_iters": _at_least(1), "train.base_lr": _POSITIVE,
    "train.weight_decay": _NON_NEGATIVE, "train.warmup_steps": _at_least(0),
    "train.warmup_start_factor": _within(0, 1), "train.lr_schedule": _one_of("constant", "cosine"),
    "train.lr_decay_start": _within(0, 1, open_high=True),
    "train.clip_grad_norm": _NON_NEGATIVE, "train.ema_decay": _within(0, 1, open_high=True),
    "train.ema_ramp_steps": _at_least(1), "train.target_metrics": _one_of("mask", "bbox"),
    "train.snapshot_epoch": _at_least(1), "train.log_iter": _at_least(1),
    "train.seed": _at_least(0),
}
# None: any input size, every image, no step limit (then `epochs` alone ends the run)
OPTIONAL = ("model.eval_size", "data.max_images", "train.max_iters")


def _anchor_positions(h: int, w: int) -> int:
    """Positions of the decoder's three feature levels (strides 8, 16, 32) for an h x w input."""
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32))


def _relations(cfg: Config) -> Iterator[str]:
    """What is wrong between fields (each field in range on its own)."""
    m = cfg.model
    for name, dim, heads in (("hidden_dim", m.hidden_dim, m.nhead),
                             ("encoder_hidden_dim", m.encoder_hidden_dim, m.encoder_nhead)):
        if dim % heads:
            yield f"model.{name} {dim} must be divisible by the number of heads {heads}"
    if m.encoder_hidden_dim % 4:  # the encoder's 2-D sin-cos position embedding
        yield f"model.encoder_hidden_dim must be divisible by 4, got {m.encoder_hidden_dim}"
    if len(m.lr_mult_list) != 5:
        yield f"model.lr_mult_list needs 5 values (stem, stage1..4), got {m.lr_mult_list}"
    if not -m.num_decoder_layers <= m.eval_idx < m.num_decoder_layers:
        yield (f"model.eval_idx must index one of the {m.num_decoder_layers} decoder layers, "
               f"got {m.eval_idx}")
    if m.num_top_queries > m.num_queries * m.num_classes:  # top (query, class) pairs
        yield (f"model.num_top_queries {m.num_top_queries} exceeds num_queries x num_classes "
               f"({m.num_queries * m.num_classes})")
    # query selection takes the top num_queries of all positions: the input must have as many
    sizes = [("model.eval_size", tuple(m.eval_size))] if m.eval_size else []
    sizes += [("data.train_sizes", (s, s)) for s in cfg.data.train_sizes]
    for name, (h, w) in sizes:
        if _anchor_positions(h, w) < m.num_queries:
            yield (f"{name}: a {h}x{w} input has {_anchor_positions(h, w)} feature positions, "
                   f"fewer than model.num_queries {m.num_queries}")


def validate(cfg: Config) -> Config:
    """Check every range of RULES and the relations between fields; one UserError lists all
    that are wrong, each naming its field, the valid range and the value given."""
    problems = []
    for key, (test, text) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None and key in OPTIONAL:
            continue
        try:
            ok = bool(test(value))
        except TypeError:  # a wrong type set in code, e.g. a string for a number
            ok = False
        if not ok:
            null = " or null" if key in OPTIONAL else ""
            shown = list(value) if isinstance(value, tuple) else value
            problems.append(f"{key} must be {text}{null}, got {shown!r}")
    if not problems:  # relations need every field in range (no division by zero heads)
        problems += list(_relations(cfg))
    if problems:
        raise UserError("; ".join(problems))
    return cfg


def parse_overrides(items: List[str], cfg: Config) -> Dict[str, Dict[str, Any]]:
    """Turn `-o section.key=value` (or `key=value` when the key is unique) into a nested mapping."""
    updates: Dict[str, Dict[str, Any]] = {}
    owners: Dict[str, List[str]] = {}
    for section in _field_types(cfg):
        for key in _field_types(getattr(cfg, section)):
            owners.setdefault(key, []).append(section)
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        if "." in key:
            section, key = key.split(".", 1)
        elif len(owners.get(key, [])) == 1:
            section = owners[key][0]
        elif key in owners:
            raise UserError(f"override key {key!r} is ambiguous; write one of "
                            f"{[s + '.' + key for s in owners[key]]}")
        else:
            raise UserError(f"unknown override key {key!r}; valid keys: {', '.join(owners)}")
        try:
            updates.setdefault(section, {})[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise UserError(f"override {item!r}: the value is not valid YAML") from None
    return updates


def apply_overrides(cfg: Config, items: Optional[List[str]]) -> Config:
    """A Config with `-o section.key=value` items applied, every key and type checked."""
    return update_config(cfg, parse_overrides(items, cfg)) if items else cfg


def load_config(path: str, overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML config (`preset:` + sections) or take a preset by name ("tiny", "l", ...),
    then apply `-o` style overrides."""
    if not os.path.isfile(path) and path.lower() in ARCHS:
        return apply_overrides(get_config(path), overrides)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:  # one line: where, and the parser's reason
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            reason = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"{path}: {where}YAML syntax error: {reason}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    cfg = get_config(raw.pop("preset", "l"))
    try:
        # the file's values and the overrides are applied together: ranges are checked once,
        # on the result (a bad value in the file may be overridden)
        for section, values in parse_overrides(overrides or [], cfg).items():
            if isinstance(raw.get(section, {}), dict):
                raw[section] = {**raw.get(section, {}), **values}
        cfg = update_config(cfg, raw)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Write a Config as YAML that `load_config` reads back to an equal Config."""
    data = dataclasses.asdict(cfg)
    data["model"]["eval_size"] = (list(cfg.model.eval_size) if cfg.model.eval_size else None)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
