"""Deployment: Paddle inference model, ONNX (+ im_shape/scale_factor fix, onnxsim), ONNX Runtime
(fp32, and int8 on CPU), OpenVINO (fp32, bf16, int8 on CPU), TensorRT FP16. See
notebooks/06_deployment.ipynb for the whole path."""

from .onnx import OnnxPredictor, bake_inputs, beside, export_onnx, simplify, to_onnx
from .openvino import OpenVinoPredictor
from .paddle import PaddlePredictor, export_inference
from .quantize import calibration_inputs, quantize_onnx
from .tensorrt import TrtPredictor, build_trt_engine, tensorrt_available

__all__ = ["OnnxPredictor", "OpenVinoPredictor", "PaddlePredictor", "TrtPredictor", "bake_inputs",
           "beside", "build_trt_engine", "calibration_inputs", "export_inference", "export_onnx",
           "quantize_onnx", "simplify", "tensorrt_available", "to_onnx"]
