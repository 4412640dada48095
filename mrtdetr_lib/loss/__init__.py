"""Training losses: Hungarian matching and MaskDINOLoss (PaddleDetection's keys)."""

from .criterion import MaskDINOLoss, build_criterion
from .matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "MaskDINOLoss", "build_criterion"]
