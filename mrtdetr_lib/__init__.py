"""mrtdetr_lib: Mask RT-DETR (PaddleDetection's real-time instance-segmentation DETR) to learn.

One import for the whole course: `import mrtdetr_lib as mrt`, then `mrt.build_model("l")`,
`mrt.build_criterion()`, `mrt.get_config("tiny")`, ... Names load lazily, so the data tools do not
pay for the model.
"""

import importlib
import os
import warnings

# Before paddle loads: keep its C++ logging quiet (nbval compares stderr), and never let
# polygraphy (used by paddle2onnx) pip-install packages behind the user's back.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")
warnings.filterwarnings("ignore", message="No ccache found")
# paddle says this for every BatchNorm in train mode, frozen ones included: noise, not news
warnings.filterwarnings("ignore", message="When training, we now always track global mean")
# paddle.jit.to_static (export) says this for every tensor it traces: noise as well
warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
warnings.filterwarnings("ignore", message="Found 'dict' in given outputs")  # we name outputs

import paddle  # noqa: E402

from .config import (ARCHS, Config, DataConfig, LossConfig, ModelConfig,  # noqa: E402
                     TrainConfig, get_config, load_config, model_config, quick_mode,
                     save_config)

__version__ = "0.1.0"


def set_num_threads(num_threads: int = 0) -> int:
    """Use `num_threads` CPU threads in paddle (0 = env MRTDETR_THREADS, else every core)."""
    if num_threads <= 0:
        num_threads = int(os.environ.get("MRTDETR_THREADS", "0")) or (os.cpu_count() or 1)
    # Many machines export OMP_NUM_THREADS=1, which would leave paddle on one core.
    paddle.base.core.set_num_threads(num_threads)
    return num_threads


set_num_threads()

# name -> module that defines it (imported on first use)
_LAZY = {
    "build_model": ".model.detr",
    "MaskRTDETR": ".model.detr",
    "build_criterion": ".loss.criterion",
    "MaskDINOLoss": ".loss.criterion",
    "HungarianMatcher": ".loss.matcher",
    "load_pretrained": ".weights",
    "Trainer": ".engine.trainer",
    "evaluate": ".engine.evaluator",
    "tiny_shapes_checkpoint": ".engine.quick",
    "Predictor": ".infer",
}

__all__ = ["ARCHS", "Config", "DataConfig", "LossConfig", "ModelConfig", "TrainConfig",
           "get_config", "load_config", "model_config", "quick_mode", "save_config",
           "set_num_threads", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'mrtdetr_lib' has no attribute {name!r}")
