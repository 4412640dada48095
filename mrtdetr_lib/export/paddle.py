"""Paddle inference model: the eager model traced to a static program, and its predictor.

`paddle.jit.to_static` traces MaskRTDETR (post-process included) for fixed input shapes and
`paddle.jit.save` writes `model.json` (a PIR program, paddle >= 3) + `model.pdiparams`, what
PaddleDetection's `tools/export_model.py` produces. The batch size is fixed at export: the
post-process resizes each image's masks to its own size, which a fixed batch keeps loop-free.
"""

import copy
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import paddle
from paddle.static import InputSpec

OUTPUTS = ("bbox", "bbox_num", "mask")


def input_spec(batch: int, size: Sequence[int]) -> list:
    """The model's inputs for tracing: image [B, 3, H, W], im_shape [B, 2], scale_factor [B, 2]."""
    return [{"image": InputSpec([batch, 3, *size], "float32", "image"),
             "im_shape": InputSpec([batch, 2], "float32", "im_shape"),
             "scale_factor": InputSpec([batch, 2], "float32", "scale_factor")}]


def export_inference(model: paddle.nn.Layer, out_dir: Union[str, Path], batch: int = 1,
                     size: Optional[Sequence[int]] = None) -> Path:
    """Trace `model` (eval mode) for `batch` images of `size` (default: its eval_size) and save
    `out_dir/model.json` + `model.pdiparams`; returns out_dir."""
    size = size or model.transformer.eval_size
    if size is None:
        raise ValueError("give size=(h, w): the model was built with eval_size=None")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    # to_static replaces the layer's forward in place: trace a copy, so `model` stays eager
    traced = copy.deepcopy(model)
    static = paddle.jit.to_static(traced, input_spec=input_spec(batch, size), full_graph=True)
    paddle.jit.save(static, str(out_dir / "model"))
    return out_dir


class PaddlePredictor:
    """Paddle Inference on an exported model: `predictor(inputs)` -> {bbox, bbox_num, mask}.

    On CPU oneDNN is switched off: paddle 3.3.1's oneDNN passes fail on this program
    ("ConvertPirAttribute2RuntimeAttribute not support"). On GPU, `trt_fp16=True` runs the
    TensorRT subgraph engine in half precision and `use_static=True` caches the built engine
    in the model folder (PaddleDetection's deploy/python/infer.py settings).
    """

    def __init__(self, model_dir: Union[str, Path], device: str = "cpu", threads: int = 0,
                 trt_fp16: bool = False, use_static: bool = False):
        import paddle.inference as pi

        model_dir = Path(model_dir)
        if not (model_dir / "model.json").is_file():
            raise FileNotFoundError(f"no exported model in {model_dir} (model.json missing); "
                                    "run export_inference first")
        config = pi.Config(str(model_dir / "model.json"), str(model_dir / "model.pdiparams"))
        if device == "gpu":
            config.enable_use_gpu(500, 0)
            if trt_fp16:
                config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=1,
                                              min_subgraph_size=3,
                                              precision_mode=pi.PrecisionType.Half,
                                              use_static=use_static, use_calib_mode=False)
        else:
            config.disable_mkldnn()
            config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
        config.disable_glog_info()
        self.predictor = pi.create_predictor(config)

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W], im_shape [B, 2], scale_factor [B, 2] (numpy float32)."""
        for name in self.predictor.get_input_names():
            self.predictor.get_input_handle(name).copy_from_cpu(
                np.ascontiguousarray(inputs[name], dtype="float32"))
        self.predictor.run()
        handles = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]
        return {name: h.copy_to_cpu() for name, h in zip(OUTPUTS, handles)}
