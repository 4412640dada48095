"""Deployment: Paddle inference model, ONNX (+ im_shape/scale_factor fix, onnxsim), ONNX Runtime,
TensorRT FP16. See notebooks/06_deployment.ipynb for the whole path."""

from .onnx import OnnxPredictor, bake_inputs, export_onnx, simplify, to_onnx
from .paddle import PaddlePredictor, export_inference
from .tensorrt import TrtPredictor, build_trt_engine, tensorrt_available

__all__ = ["OnnxPredictor", "PaddlePredictor", "TrtPredictor", "bake_inputs",
           "build_trt_engine", "export_inference", "export_onnx", "simplify",
           "tensorrt_available", "to_onnx"]
