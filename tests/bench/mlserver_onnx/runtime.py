"""A minimal MLServer runtime for the inference benchmark: the ONNX model the platform serves, run by
onnxruntime on the CPU with one thread, answering the same outputs (`probabilities`, and `label`
as the class names). MLServer imports it from the model's folder (`implementation: runtime.OnnxRuntime`)."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(parameters.uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._labels = np.array((parameters.extra or {}).get("class_labels", []), dtype=object)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        probabilities, label = self._session.run(["probabilities", "label"], {self._input: rows})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("probabilities", probabilities),
                StringCodec.encode_output("label", self._labels[label].tolist()),
            ],
        )
