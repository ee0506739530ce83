"""Export: PyTorch -> ONNX with a parity proof, INT8 quantization (calibrations, FP32 fallback, equalization),
and prediction from a file.

The INT8 calibrations' and the targets' names are declared here, without importing onnx or torch (the CLI
lists them); their items live in :mod:`.calibration` and :mod:`.targets`.
"""

from ..registry import Registry

CALIBRATIONS = Registry("calibration", home="kdexport.export.calibration")
CALIBRATIONS.declare("median", "median of each 32-image batch's min and max (ignores rare outlier images)")
CALIBRATIONS.declare("moving-average", "mean of each 32-image batch's min and max (dampens rare outliers)")
CALIBRATIONS.declare("minmax", "min and max over all calibration images")
CALIBRATIONS.declare("percentile", "99.999th percentile of a histogram")
CALIBRATIONS.declare("entropy", "KL-divergence-optimal threshold of a histogram")

TARGETS = Registry("target", home="kdexport.export.targets")
TARGETS.declare("onnx", "the ONNX file (always made: every other target is proven against the same model)")
TARGETS.declare("ort", "onnxruntime's mobile format (.ort + required_operators.config) from the ONNX files")
TARGETS.declare("openvino", "OpenVINO IR (.xml + .bin) from the ONNX file, INT8 with NNCF (kdexport[openvino])")
TARGETS.declare("litert", "LiteRT .tflite from PyTorch with litert-torch, INT8 with its PT2E quantizer "
                "(kdexport[litert])")
TARGETS.declare("executorch", "ExecuTorch .pte (XNNPACK) from torch.export, INT8 with the XNNPACK PT2E quantizer "
                "(kdexport[executorch])")
TARGETS.declare("coreml", "Core ML .mlpackage with coremltools (image input, class labels); checked, not run, off "
                "macOS (kdexport[coreml])")
