"""Sample model `sum`: sums each input row (over every axis but the first)."""

import numpy as np


class Model:
    def load(self, context: object) -> None:
        self.ready = True

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {}
        for name, array in inputs.items():
            rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
            outputs[f"{name}_sum" if len(inputs) > 1 else "sum"] = rows.sum(axis=1)
        return outputs
