"""Training and evaluation: `Trainer` (optimiser, schedule, EMA, AMP, checkpoints, multi-process)
and the COCO evaluator (`evaluate` for a library model, `evaluate_predictor` for any callable)."""

from .evaluator import COCOEvaluator, evaluate, evaluate_predictor, summary
from .log import plot_log, read_log
from .optim import build_optimizer
from .trainer import Trainer

__all__ = ["COCOEvaluator", "Trainer", "build_optimizer",
           "evaluate", "evaluate_predictor", "plot_log", "read_log", "summary"]
