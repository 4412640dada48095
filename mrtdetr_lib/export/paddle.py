"""Paddle inference model: the eager model traced to a static program, and its predictor.

`paddle.jit.to_static` traces MaskRTDETR (post-process included) for fixed input shapes and
`paddle.jit.save` writes `model.json` (a PIR program, paddle >= 3) + `model.pdiparams`, what
PaddleDetection's `tools/export_model.py` produces. The batch size is fixed at export: the
post-process resizes each image's masks to its own size, which a fixed batch keeps loop-free;
`batch=None` leaves it symbolic for images of one size (`DETRPostProcess.same_size`).

Exports are written into a hidden staging folder next to their place, checked, then moved
into place (`staged`): a full disk or a kill leaves the earlier export whole. The check is
needed: `paddle.jit.save` writes a truncated `model.pdiparams` on a full disk without an error.
"""

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np
import paddle
from paddle.static import InputSpec

from ..errors import UserError

OUTPUTS = ("bbox", "bbox_num", "mask")


def input_spec(batch: Optional[int], size: Sequence[int]) -> list:
    """The model's inputs for tracing: image [B, 3, H, W], im_shape [B, 2], scale_factor [B, 2];
    batch None: image [batch, 3, H, W] alone (`EvalSizeInputs`)."""
    if batch is None:
        return [{"image": InputSpec([None, 3, *size], "float32", "image")}]
    return [{"image": InputSpec([batch, 3, *size], "float32", "image"),
             "im_shape": InputSpec([batch, 2], "float32", "im_shape"),
             "scale_factor": InputSpec([batch, 2], "float32", "scale_factor")}]


class EvalSizeInputs(paddle.nn.Layer):
    """The model fed only images: im_shape = `size` and scale_factor = 1 for each (every image
    already the eval size), computed inside the program so the batch axis stays symbolic."""

    def __init__(self, model: paddle.nn.Layer, size: Sequence[int]):
        super().__init__()
        self.model, self.size = model, [float(s) for s in size]
        self.model.post_process.same_size = tuple(size)  # one resize for the whole batch

    def forward(self, inputs: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
        """inputs: image [B, 3, H, W] -> the model's eval outputs."""
        image = inputs["image"]
        zeros = paddle.zeros_like(image[:, 0, 0, :2])  # [B, 2]: B from the image, no Expand
        im_shape = zeros + paddle.to_tensor([self.size], dtype="float32")
        return self.model({"image": image, "im_shape": im_shape, "scale_factor": zeros + 1})


@contextlib.contextmanager
def staged(target: Union[str, Path]) -> Iterator[Path]:
    """Yield an empty hidden folder beside `target` (a file or folder); when the block ends
    without error, move each entry of it into target's folder (replacing what is there), else
    delete it. The old export stays whole until its replacement is complete and checked."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.staging"
    shutil.rmtree(stage, ignore_errors=True)  # a stale one from a kill
    stage.mkdir()
    try:
        yield stage
        for entry in sorted(stage.iterdir()):
            _move_into_place(entry, target.parent / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(source: Path, destination: Path) -> None:
    """os.replace for a file; a folder swaps with the old one, which is deleted after."""
    if not (source.is_dir() and destination.is_dir()):
        os.replace(source, destination)
        return
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(destination, old)
    os.replace(source, destination)
    shutil.rmtree(old)


def check_inference_model(model_dir: Path) -> None:
    """Refuse a model folder that paddle cannot read back: a model.json that does not parse, or
    a model.pdiparams cut short (what a full disk leaves: paddle.jit.save reports no error)."""
    try:
        json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError) as err:
        raise OSError(f"export failed: {model_dir / 'model.json'} is unreadable ({err})") from err
    # read back rather than compare sizes: a trace keeps only the parameters it uses (eval_idx)
    try:
        paddle.jit.load(str(model_dir / "model"))
    except Exception as err:  # paddle raises RuntimeError/ValueError/OSError for a short file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"export failed: {model_dir / 'model.pdiparams'} cannot be read back "
                      f"({reason}; disk full?); the earlier export is left as it was") from err


def trace_size(model: paddle.nn.Layer, size: Optional[Sequence[int]]) -> list:
    """The (h, w) an export is traced for: `size`, else the model's eval_size; a clear error
    when neither is given (a config with `model.eval_size: null` builds such a model)."""
    size = size or model.transformer.eval_size
    if not size:
        raise UserError("an export is traced for one image size and the model has none "
                        "(model.eval_size is null): set model.eval_size=[H, W], e.g. "
                        "-o model.eval_size=[640,640], or pass size=(h, w)")
    return [int(s) for s in size]


def export_inference(model: paddle.nn.Layer, out_dir: Union[str, Path], batch: Optional[int] = 1,
                     size: Optional[Sequence[int]] = None) -> Path:
    """Trace `model` (eval mode) for `batch` images of `size` (default: its eval_size) and save
    `out_dir/model.json` + `model.pdiparams`; returns out_dir. `batch=None`: any batch size of
    images that share one original size (the post-process resizes them all at once)."""
    size = trace_size(model, size)
    out_dir = Path(out_dir)
    model.eval()
    # to_static replaces the layer's forward in place: trace a copy, so `model` stays eager
    traced = copy.deepcopy(model)
    if batch is None:
        traced = EvalSizeInputs(traced, size)
    static = paddle.jit.to_static(traced, input_spec=input_spec(batch, size), full_graph=True)
    with staged(out_dir) as stage:
        paddle.jit.save(static, str(stage / out_dir.name / "model"))
        check_inference_model(stage / out_dir.name)
    return out_dir


def check_image(image: np.ndarray) -> None:
    """Refuse what is not the model's float 0..1 image (e.g. uint8 0..255, which would run)."""
    if not np.issubdtype(np.asarray(image).dtype, np.floating):
        raise UserError(f"image has dtype {np.asarray(image).dtype}: the model takes float32 "
                         f"in 0..1 (RGB / 255, e.g. data.preprocess)")
    if image.size and float(np.max(image)) > 1.0 + 1e-3:
        raise UserError(f"image values reach {float(np.max(image)):.1f}: the model takes "
                         f"float32 in 0..1 (divide 0..255 images by 255, e.g. data.preprocess)")


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
        self.input_names = self.predictor.get_input_names()

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W], im_shape [B, 2], scale_factor [B, 2] (numpy float32; the
        image alone for a dynamic-batch export)."""
        check_image(inputs["image"])
        for name in self.input_names:
            self.predictor.get_input_handle(name).copy_from_cpu(
                np.ascontiguousarray(inputs[name], dtype="float32"))
        self.predictor.run()
        handles = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]
        return {name: h.copy_to_cpu() for name, h in zip(OUTPUTS, handles)}
