"""Official weights: where they live, how to fetch them, and strict loading with a clear report.

The official PaddleDetection `.pdparams` load unchanged: our parameter names and shapes are
theirs. A `.pdparams` file is a pickle, and unpickling can run code: every pickle is read through
`safe_pickle`, which admits only what paddle.save writes for arrays. `pdparams_to_safetensors`
converts one once into plain arrays, the format the Trainer writes.
"""

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple, Union

import numpy as np
import paddle

from . import safe_pickle
from .download import cache_dir, download
from .errors import UserError
from .files import atomic_write


class Official(NamedTuple):
    url: str
    box_ap: float  # COCO val2017, as published in configs/mask_rtdetr/README.md
    mask_ap: float


_BASE = "https://paddledet.bj.bcebos.com/models/mask_rtdetr_hgnetv2_{}_6x_coco.pdparams"
OFFICIAL: Dict[str, Official] = {
    "s": Official(_BASE.format("s"), 46.1, 41.0),
    "m": Official(_BASE.format("m"), 47.6, 42.7),
    "l": Official(_BASE.format("l"), 51.3, 45.7),
    "x": Official(_BASE.format("x"), 53.1, 47.5),
    "h": Official(_BASE.format("h"), 57.4, 50.6),
}
# ImageNet (SSLD) PP-HGNetV2 backbones that PaddleDetection starts the COCO training from.
_CLAS = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/legendary_models/"
_DET = "https://bj.bcebos.com/v1/paddledet/models/pretrained/"
PRETRAINED_BACKBONES: Dict[str, str] = {
    "s": _CLAS + "PPHGNetV2_B1_ssld_stage1_pretrained.pdparams",
    "m": _CLAS + "PPHGNetV2_B2_ssld_stage1_pretrained.pdparams",
    "l": _DET + "PPHGNetV2_L_ssld_pretrained.pdparams",
    "x": _CLAS + "PPHGNetV2_B5_ssld_stage1_pretrained.pdparams",
    "h": _DET + "PPHGNetV2_H_ssld_pretrained.pdparams",
}
# Tensors whose shape follows num_classes: re-initialised when fine-tuning on other classes.
CLASS_DEPENDENT = ("transformer.score_head.weight", "transformer.score_head.bias",
                   "transformer.denoising_class_embed.weight")
# The course checkpoint (`tiny` trained on the shapes), package data of mrtdetr_lib.course. Its
# path lives here so that `pretrain_weights: course` resolves without importing the course package.
COURSE_CHECKPOINT = (Path(__file__).resolve().parent / "course" / "checkpoint"
                     / "tiny_shapes_course.safetensors")


class WeightsMismatchError(UserError):
    """A weights file does not fit the model; the message lists every difference."""


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: List[str] = field(default_factory=list)  # class tensors left at the model's init
    classes: Tuple[int, int] = (0, 0)  # (model, file) numbers of classes, when they differ

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source}"
        if not self.skipped:
            return text
        model, file = self.classes
        return (text + f"; re-initialised for {model} class{'es' * (model != 1)} (file has "
                f"{file}): {', '.join(self.skipped)}")


def resolve(path_or_url: str, progress: bool = True) -> Path:
    """A local file for a path, a URL (downloaded once into the cache), an official name
    ("l" or "mask_rtdetr_hgnetv2_l_6x_coco") or "course" (the course checkpoint)."""
    name = str(path_or_url).lower().removesuffix(".pdparams")
    if name == "course":
        if not COURSE_CHECKPOINT.is_file():
            raise FileNotFoundError(f"the course checkpoint is missing: {COURSE_CHECKPOINT} (a "
                                    "broken install? `make checkpoint` trains it again)")
        return COURSE_CHECKPOINT
    for arch, official in OFFICIAL.items():
        if name in (arch, f"mask_rtdetr_hgnetv2_{arch}_6x_coco"):
            path_or_url = official.url
    text = str(path_or_url)
    if text.startswith(("http://", "https://", "file://")):
        return download(text, cache_dir() / text.rstrip("/").rsplit("/", 1)[-1], progress=progress)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (give a path, a URL, course "
                                f"or one of {', '.join(OFFICIAL)})")
    return path


def read_state_dict(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """{name: array} from a .safetensors file (no pickle) or a .pdparams file (a pickle, read
    through `safe_pickle`: a file that would run code is refused)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():  # else the reader's own error would read like a damaged file
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, TypeError, KeyError, IndexError,
            pickle.UnpicklingError, SafetensorError) as err:
        raise IOError(f"cannot read weights file {path}: {err} (truncated or not a weights "
                      "file? delete it and download again)") from None
    if not isinstance(state, dict):
        raise IOError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return _arrays(state)


def _arrays(state: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """paddle.save's layouts of a state dict, read as `paddle.load(return_numpy=True)` does."""
    state = dict(state)
    state.pop("StructuredToParameterName@@", None)  # paddle 2.0: structured name -> param.name
    for name, info in state.pop("UnpackBigParamInfor@@", {}).items():  # a >1 GB tensor in slices
        parts = [state.pop(part) for part in info["slices"]]
        state[name] = np.concatenate(parts).reshape(info["OriginShape"])
    return {k: np.asarray(v[1] if _is_named_array(v) else v) for k, v in state.items()}


def _is_named_array(value: Any) -> bool:
    """paddle.save writes a tensor inside a nested dict (and paddle 2.1 every tensor) as
    (param.name, array)."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def _listing(items: List[str], limit: int = 12) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def compare(model_state: Dict[str, paddle.Tensor], loaded: Dict[str, np.ndarray]):
    """(missing, unexpected, mis-shaped) keys of a loaded state dict against a model's."""
    missing = [k for k in model_state if k not in loaded]
    unexpected = [k for k in loaded if k not in model_state]
    shapes = [(k, list(loaded[k].shape), list(t.shape)) for k, t in model_state.items()
              if k in loaded and list(loaded[k].shape) != list(t.shape)]
    return missing, unexpected, shapes


def set_exact(model: paddle.nn.Layer, state: Mapping[str, Any], source: str) -> None:
    """model.set_state_dict(state) that first fails, naming `source`, on any missing,
    unexpected or mis-shaped key (a state dict of another model)."""
    missing, unexpected, shapes = compare(model.state_dict(), state)
    if missing or unexpected or shapes:
        shapes = [f"{k} given {a} model {b}" for k, a, b in shapes]
        raise WeightsMismatchError(
            f"{source} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, mis-shaped {shapes[:5]} (was it trained with another config?)")
    model.set_state_dict(dict(state))


def count_parameters(model_or_shapes: Union[paddle.nn.Layer, Mapping[str, Sequence[int]]],
                     depth: int = 1) -> Dict[str, int]:
    """Numbers of values of a model's state dict (BatchNorm statistics included, as in a
    .pdparams file) or of {name: shape}: summed per name prefix of `depth` parts (depth 1:
    a MaskRTDETR's backbone, neck and transformer), then "total" and "tensors"."""
    shapes = model_or_shapes
    if isinstance(shapes, paddle.nn.Layer):
        shapes = {name: tensor.shape for name, tensor in shapes.state_dict().items()}
    counts: Dict[str, int] = {}
    for name, shape in shapes.items():
        prefix = ".".join(name.split(".")[:depth])
        counts[prefix] = counts.get(prefix, 0) + math.prod(int(dim) for dim in shape)
    return {**counts, "total": sum(counts.values()), "tensors": len(shapes)}


def load_pretrained(model: paddle.nn.Layer, path_or_url: str, strict: bool = True,
                    skip_mismatch_classes: bool = False, progress: bool = True) -> LoadReport:
    """Load weights into `model`; any missing, unexpected or mis-shaped key raises one error
    that lists them all. `skip_mismatch_classes` keeps the model's own (freshly initialised)
    class-dependent tensors when their shape differs: fine-tuning a COCO model on other classes;
    the report then names them and both numbers of classes."""
    path = resolve(path_or_url, progress)
    loaded = read_state_dict(path)
    model_state = model.state_dict()
    missing, unexpected, shapes = compare(model_state, loaded)
    report = LoadReport(str(path))
    if skip_mismatch_classes:
        report.skipped = [k for k, _, _ in shapes if k in CLASS_DEPENDENT]
        shapes = [s for s in shapes if s[0] not in CLASS_DEPENDENT]
        bias = "transformer.score_head.bias"  # [K]: its length is the number of classes
        if report.skipped and bias in loaded and bias in model_state:
            report.classes = (int(model_state[bias].shape[0]), int(loaded[bias].shape[0]))
    problems = []
    if shapes:
        shapes_text = [f"{k} file {a} model {b}" for k, a, b in shapes]
        problems.append(f"mis-shaped ({len(shapes)}): {_listing(shapes_text)}")
    if strict and missing:
        problems.append(f"missing from the file ({len(missing)}): {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected in the file ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        hint = (" (another num_classes? pass skip_mismatch_classes=True)"
                if any(k in CLASS_DEPENDENT for k, _, _ in shapes) else "")
        raise WeightsMismatchError(f"{path} does not fit the model{hint}:\n  "
                                   + "\n  ".join(problems))
    keep = [k for k in model_state if k in loaded and k not in report.skipped]
    for name in keep:  # in place: the skipped class tensors keep their fresh values
        model_state[name].set_value(paddle.to_tensor(loaded[name], dtype=model_state[name].dtype))
    report.loaded = len(keep)
    return report


def load_backbone(model: paddle.nn.Layer, path_or_url: str, progress: bool = True) -> LoadReport:
    """Start training from an ImageNet PP-HGNetV2 (PRETRAINED_BACKBONES): every backbone
    tensor must be in the file; the classifier's extra tensors are ignored."""
    path = resolve(PRETRAINED_BACKBONES.get(str(path_or_url).lower(), path_or_url), progress)
    loaded = read_state_dict(path)
    loaded = {k.removeprefix("backbone."): v for k, v in loaded.items()}
    missing, _, shapes = compare(model.backbone.state_dict(), loaded)
    if missing or shapes:
        raise WeightsMismatchError(
            f"{path} is not a backbone of this model: missing ({len(missing)}): "
            f"{_listing(missing)}; mis-shaped: {_listing([k for k, _, _ in shapes])}")
    keep = {k: paddle.to_tensor(loaded[k]) for k in model.backbone.state_dict()}
    model.backbone.set_state_dict(keep)
    return LoadReport(str(path), loaded=len(keep))


def save_safetensors(state: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Write {name: tensor or array} to a .safetensors file (plain arrays: loading it runs no
    code), atomically."""
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(v.numpy() if isinstance(v, paddle.Tensor) else v)
              for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp))
    return Path(path)


def pdparams_to_safetensors(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Convert a .pdparams (pickle) to .safetensors (plain tensors, safe to load)."""
    return save_safetensors(read_state_dict(src), dst)


def safetensors_to_pdparams(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Convert a .safetensors file back to a .pdparams that PaddleDetection reads."""
    state = read_state_dict(src)
    atomic_write(dst, lambda tmp: paddle.save(state, tmp))
    return Path(dst)
