"""Crash-safe checkpoints: atomic writes, RNG states, optimiser state keyed by parameter path.

PaddleDetection saves `.pdparams` (EMA weights), `.pdema` and `.pdopt` side by side with plain
`paddle.save` (`ppdet/utils/checkpoint.py`); a kill during the write leaves a broken file. Here
every file is written to a temporary name and renamed over the old one (`files.atomic_write`),
so the last good checkpoint survives any interruption. Reading goes through `safe_pickle`: a
checkpoint that would run code is refused.
"""

import dataclasses
import json
import random
import re
from typing import Any, Dict, List, Tuple

import numpy as np
import paddle
from paddle import nn

from .. import safe_pickle
from ..config import Config
from ..errors import UserError
from ..files import atomic_write

# What a resumed run must share with its checkpoint: the model, and which samples the remaining
# steps see in which order (the data set, its size, the batch, sizes, augmentation, seed). Other
# fields may change on resume (epochs, max_iters, base_lr, log_iter, output_dir, eval, ...);
# the Trainer's "resumed from" line lists each.
SAME_ON_RESUME = ("model.", "data.dataset_dir", "data.train_image_dir", "data.train_anno_path",
                  "data.max_images", "data.allow_empty", "data.batch_size", "data.train_sizes",
                  "data.augment", "train.seed", "train.use_ema")

# AdamW accumulators are saved under "<param.name>_<accumulator>_0"; param.name ("linear_12.w_0")
# depends on how many layers the process built before, so we store structured names instead.
_ACCUMULATOR = re.compile(r"^(?P<param>.+)_(?P<acc>moment1|moment2|moment2_max|beta1_pow_acc|"
                          r"beta2_pow_acc)_(?P<idx>\d+)$")


def atomic_save(obj: Any, path: str) -> None:
    """paddle.save to `path.tmp`, fsync, then rename over `path`: never a half-written file."""
    atomic_write(path, lambda tmp: paddle.save(obj, tmp))


def read_checkpoint(path: str) -> Any:
    """What `atomic_save` wrote, through the guard; (name, array) pairs become tensors again, as
    paddle.load makes them."""
    try:
        return _tensors(safe_pickle.load(path))
    except safe_pickle.UnsafePickleError:
        raise
    except Exception as err:  # a foreign or broken pickle fails in many ways
        raise UserError(f"{path} is not a readable trainer checkpoint ({err})") from None


def _tensors(obj: Any) -> Any:
    if (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], np.ndarray)):  # how paddle.save pickles a nested tensor
        return paddle.to_tensor(obj[1])
    if isinstance(obj, dict):
        return type(obj)((key, _tensors(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(value) for value in obj)
    return obj


def config_changes(saved: Dict[str, Any], cfg: Config) -> Tuple[List[str], List[str]]:
    """The differences "field old -> new" between a checkpoint's `asdict(config)` and `cfg`:
    (those SAME_ON_RESUME forbids, the others). Fields only one side knows are left out."""
    old, new = _flat(saved), _flat(dataclasses.asdict(cfg))
    refused, allowed = [], []
    for key in new:
        if key in old and key != "train.resume" and old[key] != new[key]:
            change = f"{key} {old[key]!r} -> {new[key]!r}"
            (refused if key.startswith(SAME_ON_RESUME) else allowed).append(change)
    return refused, allowed


def _flat(config: Dict[str, Any]) -> Dict[str, Any]:
    """{"section.field": value} with tuples as lists (a YAML config gives lists)."""
    return {f"{section}.{key}": json.loads(json.dumps(value))
            for section, fields in config.items() for key, value in fields.items()}


def rng_state() -> Dict[str, Any]:
    """Python, numpy and paddle (CPU generator) random states, to resume bit-exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "paddle": paddle.get_rng_state()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore `rng_state()`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])


def optimizer_state(optimizer: paddle.optimizer.Optimizer, model: nn.Layer) -> Dict[str, Any]:
    """optimizer.state_dict() with accumulator keys renamed from param.name to the param's path."""
    paths = {p.name: path for path, p in model.named_parameters()}
    state = {}
    for key, value in optimizer.state_dict().items():
        match = _ACCUMULATOR.match(key)
        if match and match["param"] in paths:
            key = f"{paths[match['param']]}:{match['acc']}_{match['idx']}"
        state[key] = value
    return state


def set_optimizer_state(optimizer: paddle.optimizer.Optimizer, model: nn.Layer,
                        state: Dict[str, Any]) -> None:
    """Inverse of `optimizer_state` for the parameters of `model` as built in this process."""
    names = {path: p.name for path, p in model.named_parameters()}
    restored = {}
    for key, value in state.items():
        path, sep, acc = key.rpartition(":")
        if sep and path in names:
            key = f"{names[path]}_{acc}"
        restored[key] = value
    optimizer.set_state_dict(restored)
