"""Data: COCO instance data set, the Mask RT-DETR transforms, synthetic shapes, loader, checks."""

from .coco import COCOInstanceDataset, load_coco, mask_to_rle, segmentation_to_mask
from .loader import Collate, LoaderWithErrors, SeededBatchSampler, build_dataset, build_loader
from .transforms import eval_transforms, masks_to_boxes, preprocess, read_image, train_transforms

__all__ = ["COCOInstanceDataset", "Collate", "LoaderWithErrors", "SeededBatchSampler",
           "build_dataset", "build_loader", "eval_transforms", "load_coco", "mask_to_rle",
           "masks_to_boxes", "preprocess", "read_image", "segmentation_to_mask",
           "train_transforms"]
