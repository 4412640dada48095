"""mrtdetr_lib: Mask RT-DETR (PaddleDetection's real-time instance-segmentation DETR) to learn.

One import for the whole course: `import mrtdetr_lib as mrt`, then `mrt.build_model("l")`,
`mrt.build_criterion()`, `mrt.get_config("tiny")`, ... Names load lazily, so the data tools do not
pay for the model. Importing it changes nothing global (threads, environment, warning filters):
programs call `mrtdetr_lib.setup()` where they start; the notebooks' `mrtdetr_lib.course` does.
"""

import importlib

from .config import (
    ARCHS,
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    get_config,
    load_config,
    model_config,
    quick_mode,
    save_config,
)
from .errors import UserError
from .runtime import set_num_threads, setup

__version__ = "0.1.0"


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
    "Predictor": ".infer",
}

__all__ = ["ARCHS", "Config", "DataConfig", "LossConfig", "ModelConfig", "TrainConfig",
           "get_config", "load_config", "model_config", "quick_mode", "save_config",
           "set_num_threads", "setup", "UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'mrtdetr_lib' has no attribute {name!r}")
