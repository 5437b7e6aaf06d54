"""Sample model `echo`: returns its input tensors unchanged as outputs (zero-copy)."""

from headrace.gateway.oip.types import InferRequest, Tensor


class Model:
    # Receive the OIP request itself instead of numpy arrays: nothing is decoded or copied.
    tensor_format = "oip"

    def predict(self, request: InferRequest) -> list[Tensor]:
        return request.inputs
