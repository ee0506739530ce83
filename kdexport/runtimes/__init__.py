"""Runtimes: running a model file, one module per runtime behind one interface (:mod:`.base`): load a file,
say its input spec, run a batch; and the accuracy of a file on a dataset's test split. Timing is not here
(``kdexport.bench`` times every runtime with one harness).

The runtimes' names are declared here, each with the module that implements it and the file suffixes it
runs, so picking a runtime for a file imports nothing heavy.
"""

from ..registry import Registry

RUNTIMES = Registry("runtime")
RUNTIMES.declare("onnxruntime", "ONNX Runtime, CPU execution provider (.onnx, .ort)", home="kdexport.runtimes.ort")
RUNTIMES.declare("openvino", "OpenVINO, CPU plugin (.xml IR with its .bin; kdexport[openvino])",
                 home="kdexport.runtimes.openvino")

RUNTIMES.declare("litert", "LiteRT (TFLite) interpreter with XNNPACK (.tflite; kdexport[litert])",
                 home="kdexport.runtimes.litert")
RUNTIMES.declare("executorch", "ExecuTorch runtime, XNNPACK-delegated programs (.pte; kdexport[executorch])",
                 home="kdexport.runtimes.executorch")
RUNTIMES.declare("coreml", "Core ML packages (.mlpackage; checked, not run: Core ML predicts only on macOS; "
                 "kdexport[coreml])", home="kdexport.runtimes.coreml")

SUFFIXES = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".xml": "openvino", ".tflite": "litert",
            ".pte": "executorch", ".mlpackage": "coreml"}  # suffix -> the runtime that runs it
