"""Built-in model runtimes: a user Python class (`model.py`) and scikit-learn/joblib models."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from headrace.config.errors import HeadraceError, InvalidInputError
from headrace.gateway.control import LoadedModel, ModelSpec, TensorSpec
from headrace.gateway.oip.types import InferRequest, InferResponse, Tensor


class ModelLoadError(HeadraceError):
    pass


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a user model's ``load(context)`` receives."""

    name: str
    path: Path
    parameters: dict[str, str] = field(default_factory=dict)


class LoadedRuntime(Protocol):
    name: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def predict(self, request: InferRequest) -> list[Tensor]: ...


def _tensor_specs(raw: Any) -> list[TensorSpec]:
    specs = []
    for item in raw or []:
        specs.append(TensorSpec(str(item["name"]), str(item["datatype"]), [int(d) for d in item["shape"]]))
    return specs


class PythonRuntime:
    """Runs a user class from ``model.py`` (class ``Model`` or the one named by parameter ``class``).

    The class may define ``load(context)`` and must define ``predict``. By default ``predict``
    receives ``dict[name, numpy.ndarray]`` (and ``parameters`` if it takes a second argument) and
    returns ``dict[name, array]``; with ``tensor_format = "oip"`` it receives the
    :class:`InferRequest` and returns tensors, without any decoding or copy.
    """

    platform = "headrace-python"

    def __init__(self, spec: ModelSpec) -> None:
        self.name = spec.name
        path = Path(spec.uri)
        source = path / "model.py"
        if not source.is_file():
            raise ModelLoadError(f"model {spec.name}: {source} not found")
        module_name = f"headrace_user_model_{spec.name.replace('-', '_')}_{spec.generation}"
        module_spec = importlib.util.spec_from_file_location(module_name, source)
        if module_spec is None or module_spec.loader is None:
            raise ModelLoadError(f"model {spec.name}: cannot import {source}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"model {spec.name}: importing {source} failed: {exc!r}") from exc
        class_name = spec.parameters.get("class", "Model")
        cls = getattr(module, class_name, None)
        if cls is None or not inspect.isclass(cls):
            raise ModelLoadError(f"model {spec.name}: {source} defines no class {class_name}")
        try:
            self._model = cls()
            load = getattr(self._model, "load", None)
            if load is not None:
                load(ModelContext(spec.name, path, dict(spec.parameters)))
        except Exception as exc:
            raise ModelLoadError(f"model {spec.name}: load failed: {exc!r}") from exc
        self._oip = getattr(cls, "tensor_format", "numpy") == "oip"
        predict = getattr(self._model, "predict", None)
        if predict is None:
            raise ModelLoadError(f"model {spec.name}: class {class_name} has no predict()")
        self._predict = predict
        self._with_params = len(inspect.signature(predict).parameters) >= 2
        self.platform = str(getattr(cls, "platform", PythonRuntime.platform))
        self.inputs = _tensor_specs(getattr(cls, "inputs", None))
        self.outputs = _tensor_specs(getattr(cls, "outputs", None))

    def predict(self, request: InferRequest) -> list[Tensor]:
        if self._oip:
            result = self._predict(request)
            if isinstance(result, InferResponse):
                return result.outputs
            return list(result)
        arrays = {t.name: t.to_numpy() for t in request.inputs}
        result = self._predict(arrays, request.parameters) if self._with_params else self._predict(arrays)
        return outputs_from(result)


def outputs_from(result: Any) -> list[Tensor]:
    """Accepts dict[name, array-like] or a list of Tensors from user code."""
    if isinstance(result, dict):
        out = []
        for name, value in result.items():
            if isinstance(value, Tensor):
                out.append(value)
            else:
                out.append(Tensor.from_numpy(str(name), np.asarray(value)))
        return out
    if isinstance(result, (list, tuple)) and all(isinstance(t, Tensor) for t in result):
        return list(result)
    raise TypeError(f"predict() must return dict[str, array] or list[Tensor], not {type(result).__name__}")


class SklearnRuntime:
    """A scikit-learn estimator saved with joblib: one input tensor in, ``predict`` out."""

    platform = "sklearn"

    def __init__(self, spec: ModelSpec) -> None:
        import joblib

        self.name = spec.name
        path = Path(spec.uri)
        candidates = sorted([*path.glob("*.joblib"), *path.glob("*.pkl")]) if path.is_dir() else [path]
        if not candidates:
            raise ModelLoadError(f"model {spec.name}: no *.joblib or *.pkl file in {path}")
        try:
            self._model = joblib.load(candidates[0])
        except Exception as exc:
            raise ModelLoadError(f"model {spec.name}: loading {candidates[0].name} failed: {exc!r}") from exc
        self._method = spec.parameters.get("method", "predict")
        if not hasattr(self._model, self._method):
            raise ModelLoadError(f"model {spec.name}: estimator has no method {self._method}")
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    def predict(self, request: InferRequest) -> list[Tensor]:
        if len(request.inputs) != 1:
            raise InvalidInputError(
                f"model {self.name} takes exactly one input tensor, got {len(request.inputs)}"
            )
        x = request.inputs[0].to_numpy()
        y = np.asarray(getattr(self._model, self._method)(x))
        return [Tensor.from_numpy(self._method, y)]


RUNTIMES: dict[str, type[PythonRuntime] | type[SklearnRuntime]] = {
    "python": PythonRuntime,
    "sklearn": SklearnRuntime,
}


def load_runtime(spec: ModelSpec) -> LoadedRuntime:
    try:
        factory = RUNTIMES[spec.runtime]
    except KeyError:
        raise ModelLoadError(f"model {spec.name}: unknown runtime {spec.runtime!r}") from None
    return factory(spec)


def try_load(spec: ModelSpec) -> tuple[LoadedRuntime | None, LoadedModel]:
    """Load a model and describe the outcome the way the scheduler wants it reported."""
    try:
        runtime = load_runtime(spec)
    except Exception as exc:
        return None, LoadedModel(
            name=spec.name, generation=spec.generation, state="LoadFailed", message=str(exc)
        )
    return runtime, LoadedModel(
        name=spec.name,
        generation=spec.generation,
        state="Loaded",
        platform=runtime.platform,
        inputs=runtime.inputs,
        outputs=runtime.outputs,
    )
