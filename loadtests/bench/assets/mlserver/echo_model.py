"""MLServer custom runtime for the benchmark: returns each input as an output (copied to the model folder)."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class EchoModel(MLModel):  # type: ignore[misc]  # mlserver is only in its own venv
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = [
            ResponseOutput(name=f"output-{i}", shape=inp.shape, datatype=inp.datatype, data=inp.data)
            for i, inp in enumerate(payload.inputs)
        ]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
