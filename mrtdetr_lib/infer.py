"""Predictor: image file / array / folder -> instances (boxes, scores, labels, masks), drawn.

Preprocessing is PaddleDetection's TestReader for Mask RT-DETR (`Decode`, `Resize` to the eval
size with `keep_ratio False` and cubic interpolation, `NormalizeImage` to 0..1, `Permute`), taken
(`data.preprocess`), and the drawing mirrors `tools/infer.py` (instances above
`--draw_threshold`). The model is a library
`MaskRTDETR` or any callable with the same eval contract (an exported Paddle Inference / ONNX
Runtime / TensorRT predictor), so every backend is used the same way.
"""

import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import paddle

from .data.transforms import preprocess, read_image
from .errors import UserError
from .files import atomic_write
from .slicing import predict_sliced
from .viz import draw_instances

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Image = Union[str, np.ndarray]


def to_instances(outputs: Dict[str, Any], score_threshold: float = 0.0) -> Dict[str, np.ndarray]:
    """One image's eval outputs (bbox [k, 6], bbox_num [1], mask [k, H0, W0]) -> its detections
    scoring >= `score_threshold`, highest first: boxes [n, 4] x1,y1,x2,y2 pixels, scores [n],
    labels [n] int64, masks [n, H0, W0] as the outputs hold them (0/1 from the post-process)."""
    bbox = np.asarray(outputs["bbox"])[:int(np.asarray(outputs["bbox_num"]).reshape(-1)[0])]
    keep = bbox[:, 1] >= score_threshold
    return {"boxes": bbox[keep, 2:], "scores": bbox[keep, 1],
            "labels": bbox[keep, 0].astype(np.int64),
            "masks": np.asarray(outputs["mask"])[:len(bbox)][keep]}


def list_images(infer_img: Optional[str] = None, infer_dir: Optional[str] = None) -> List[str]:
    """The image given by --infer_img, or the images of --infer_dir (sorted)."""
    if infer_img:
        if not os.path.isfile(infer_img):
            raise FileNotFoundError(f"--infer_img not found: {infer_img}")
        return [infer_img]
    if not infer_dir:
        raise UserError("give --infer_img IMAGE or --infer_dir FOLDER")
    if not os.path.isdir(infer_dir):
        raise NotADirectoryError(f"--infer_dir is not a folder: {infer_dir}")
    images = sorted(os.path.join(infer_dir, name) for name in os.listdir(infer_dir)
                    if name.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {infer_dir}")
    return images


class Predictor:
    """`predictor(image)` -> {"boxes" [n,4] xyxy px, "scores" [n], "labels" [n], "masks" [n,H,W]}.

    `model`: a MaskRTDETR (run in eval mode without gradients) or a callable taking the numpy
    inputs dict and returning the eval outputs (`bbox`, `bbox_num`, `mask`).
    """

    def __init__(self, model: Union[paddle.nn.Layer, Callable[[Dict], Dict]],
                 threshold: float = 0.5, image_size: Optional[Sequence[int]] = None,
                 class_names: Optional[Sequence[str]] = None):
        if image_size is None and isinstance(model, paddle.nn.Layer):
            image_size = model.transformer.eval_size  # the size its anchors were built for
        if image_size is None:
            raise UserError("Predictor needs an image_size (h, w): the model's eval_size")
        self.model, self.threshold = model, threshold
        self.image_size, self.class_names = tuple(image_size), class_names

    def _run(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if not isinstance(self.model, paddle.nn.Layer):
            outputs = self.model(inputs)
        else:
            self.model.eval()
            with paddle.no_grad():
                outputs = self.model({k: paddle.to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() if isinstance(v, paddle.Tensor) else np.asarray(v)
                for k, v in outputs.items()}

    def __call__(self, image: Image) -> Dict[str, np.ndarray]:
        """Instances of one image (path or RGB uint8 array) with score >= threshold."""
        rgb = read_image(image) if isinstance(image, str) else image
        instances = to_instances(self._run(preprocess(rgb, self.image_size)), self.threshold)
        return {**instances, "masks": instances["masks"].astype(bool)}

    def predict_sliced(self, image: Image, slice_size: Sequence[int] = (640, 640),
                       overlap_ratio: Sequence[float] = (0.25, 0.25), combine_method: str = "nms",
                       match_threshold: float = 0.6, match_metric: str = "ios",
                       whole_image: bool = False) -> Dict[str, np.ndarray]:
        """Instances of one image from overlapping tiles, each run like an image (slicing.py):
        small objects reach the model larger. Same output as calling the predictor."""
        rgb = read_image(image) if isinstance(image, str) else image
        return predict_sliced(self, rgb, slice_size, overlap_ratio, combine_method,
                              match_threshold, match_metric, whole_image)

    def draw(self, image: Image, instances: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        """RGB uint8 image with the instances' masks, boxes and labels drawn on it."""
        rgb = read_image(image) if isinstance(image, str) else image
        instances = instances if instances is not None else self(rgb)
        return draw_instances(rgb, instances, class_names=self.class_names)

    def save_drawings(self, images: Sequence[str], output_dir: str,
                      predict: Optional[Callable[[np.ndarray], Dict[str, np.ndarray]]] = None
                      ) -> Iterator[Tuple[str, str, Dict[str, np.ndarray]]]:
        """Draw each image into output_dir (same file name); yields (image, saved, instances).
        `predict(rgb)` finds the instances (e.g. a sliced prediction); default the predictor.
        Refuses, before writing anything, an output_dir where a drawing would replace one of
        the input images (e.g. output_dir = the images' folder)."""
        targets = [os.path.join(output_dir, os.path.basename(path)) for path in images]
        inputs = {os.path.realpath(path) for path in images}
        clash = [t for t in targets if os.path.realpath(t) in inputs]
        if clash:
            raise UserError(f"output folder {output_dir} would overwrite the input image "
                            f"{clash[0]}: choose another --output_dir")
        os.makedirs(output_dir, exist_ok=True)
        for path, saved in zip(images, targets):
            rgb = read_image(path)
            instances = (predict or self)(rgb)
            write_image(saved, self.draw(rgb, instances))
            yield path, saved, instances


def write_image(path: str, rgb: np.ndarray) -> str:
    """Write an RGB uint8 image (format from the extension) whole or not at all; a full disk
    or an unwritable folder raises OSError naming `path` (cv2.imwrite only returns False)."""
    ok, data = cv2.imencode(os.path.splitext(path)[1], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot encode an image as {path} (unknown extension?)")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())

    return atomic_write(path, write)
