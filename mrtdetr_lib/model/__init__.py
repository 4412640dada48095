"""The Mask RT-DETR model: backbone, neck, transformer, post-process and `build_model`."""

from .decoder import split_predictions
from .detr import MaskRTDETR, build_model
from .postprocess import DETRPostProcess

__all__ = ["DETRPostProcess", "MaskRTDETR", "build_model", "split_predictions"]
