"""Seldon Pipeline manifests (mlops.seldon.io/v1alpha1): parsing, reference syntax, what this release runs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
import yaml

from headrace.config.errors import ConfigError
from headrace.config.manifests import _NAME_RE, API_VERSION, _check_fields, _metadata, _strings

JoinType = Literal["inner", "outer", "any"]
Direction = Literal["inputs", "outputs"]
JOIN_TYPES: tuple[str, ...] = ("inner", "outer", "any")
INPUTS: Direction = "inputs"
OUTPUTS: Direction = "outputs"
TIMEOUT_ANNOTATION = "headrace.io/timeout-seconds"
MAX_UINT32 = 2**32 - 1

_SPEC_FIELDS = {"input", "steps", "output", "dataflow", "allowCycles", "maxStepRevisits"}
_STEP_FIELDS = {
    "name",
    "inputs",
    "joinWindowMs",
    "tensorMap",
    "triggers",
    "inputsJoinType",
    "triggersJoinType",
    "batch",
}
_BATCH_FIELDS = {"size", "windowMs", "rolling"}
_OUTPUT_FIELDS = {"steps", "joinWindowMs", "stepsJoin", "tensorMap"}
_INPUT_FIELDS = {
    "externalInputs",
    "externalTriggers",
    "joinWindowMs",
    "joinType",
    "triggersJoinType",
    "tensorMap",
}


class BatchSpec(msgspec.Struct, frozen=True, kw_only=True):
    size: int | None = None
    window_ms: int | None = None  # not used by Seldon's dataflow engine either
    rolling: bool = False


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One step; its name is the Model it calls. References are kept as written."""

    name: str
    inputs: list[str] = []
    tensor_map: dict[str, str] = {}
    triggers: list[str] = []
    inputs_join_type: JoinType = "inner"
    triggers_join_type: JoinType = "inner"
    join_window_ms: int | None = None
    batch: BatchSpec | None = None


class OutputSpec(msgspec.Struct, frozen=True, kw_only=True):
    steps: list[str] = []
    steps_join: JoinType = "inner"
    join_window_ms: int = 0
    tensor_map: dict[str, str] = {}


class InputSpec(msgspec.Struct, frozen=True, kw_only=True):
    external_inputs: list[str] = []
    external_triggers: list[str] = []
    join_window_ms: int | None = None
    join_type: JoinType = "inner"
    triggers_join_type: JoinType = "inner"
    tensor_map: dict[str, str] = {}


class PipelineManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed Seldon Pipeline, checked as Seldon's scheduler checks it.

    ``timeout_s`` is a headrace extension: the annotation ``headrace.io/timeout-seconds`` in
    metadata.annotations, a positive number of seconds, bounds the pipeline's requests (Seldon's
    pipeline gateway waits forever). None when the annotation is absent.
    """

    name: str
    steps: list[StepSpec]
    namespace: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    output: OutputSpec | None = None
    input: InputSpec | None = None
    allow_cycles: bool = False
    max_step_revisits: int = 0
    clean_topics_on_delete: bool = False
    timeout_s: float | None = None
    kind: str = "Pipeline"

    def spec_key(self) -> bytes:
        """What decides the generation: everything but labels and annotations (timeout_s included)."""
        return msgspec.json.encode(msgspec.structs.replace(self, labels={}, annotations={}))


class Ref(msgspec.Struct, frozen=True):
    """A reference inside a pipeline: a step's (or the pipeline's own) inputs or outputs, maybe one tensor."""

    name: str
    direction: Direction
    tensor: str | None = None
    pipeline: bool = False  # ``name`` is the pipeline itself, not a step

    def __str__(self) -> str:
        base = f"{self.name}.{self.direction}"
        return base if self.tensor is None else f"{base}.{self.tensor}"


def parse_ref(ref: str, pipeline: str) -> Ref:
    """``m`` → m.outputs, ``<pipeline>`` → <pipeline>.inputs, ``m.inputs|outputs[.tensor]`` (Seldon §1.2).

    Raises ValueError with the reason when the syntax is wrong.
    """
    parts = ref.split(".")
    if any(not p.strip() for p in parts):
        raise ValueError("is empty or has an empty part")
    if len(parts) > 3:
        raise ValueError("has too many parts (expected <step>[.inputs|.outputs[.<tensor>]])")
    name = parts[0]
    if len(parts) == 1:
        return Ref(name, INPUTS if name == pipeline else OUTPUTS, None, name == pipeline)
    if parts[1] not in (INPUTS, OUTPUTS):
        raise ValueError(f"has {parts[1]!r} where inputs or outputs is expected")
    return Ref(name, parts[1], parts[2] if len(parts) == 3 else None, name == pipeline)


def parse_external_ref(ref: str) -> tuple[str, Ref]:
    """(source pipeline, what it reads) for an ``input.externalInputs`` reference: ``p`` (p.outputs),
    ``p.inputs|outputs[.tensor]``, ``p.step.s`` (s.outputs) or ``p.step.s.inputs|outputs[.tensor]``.

    Raises ValueError with the reason when the syntax is wrong.
    """
    parts = ref.split(".")
    if any(not p.strip() for p in parts):
        raise ValueError("is empty or has an empty part")
    source = parts[0]
    if len(parts) == 1:
        return source, Ref(source, OUTPUTS, None, True)
    if parts[1] in (INPUTS, OUTPUTS):
        if len(parts) > 3:
            raise ValueError("has too many parts (expected <pipeline>[.inputs|.outputs[.<tensor>]])")
        return source, Ref(source, parts[1], parts[2] if len(parts) == 3 else None, True)
    if parts[1] != "step" or len(parts) < 3:
        raise ValueError(f"has {parts[1]!r} where inputs, outputs or step is expected")
    if len(parts) == 3:
        return source, Ref(parts[2], OUTPUTS, None, False)
    if parts[3] not in (INPUTS, OUTPUTS) or len(parts) > 5:
        raise ValueError("must be <pipeline>.step.<step>[.inputs|.outputs[.<tensor>]]")
    return source, Ref(parts[2], parts[3], parts[4] if len(parts) == 5 else None, False)


def parse_tensor_key(key: str, pipeline: str) -> Ref:
    """A tensorMap key ``<step|pipeline>.<inputs|outputs>.<tensor>`` (the tensor may contain dots)."""
    parts = key.split(".", 2)
    if len(parts) < 3 or not all(p.strip() for p in parts):
        raise ValueError("must be <step>.<inputs|outputs>.<tensor>")
    if parts[1] not in (INPUTS, OUTPUTS):
        raise ValueError(f"has {parts[1]!r} where inputs or outputs is expected")
    return Ref(parts[0], parts[1], parts[2], parts[0] == pipeline)


# ------------------------------------------------------------------------------------------- parsing


def _mapping(value: Any, where: str, field: str, fields: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {field} must be a mapping")
    _check_fields(value, fields, set(), where, f"{field}.")
    return value


def _uint32(value: Any, where: str, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT32:
        raise ConfigError(f"{where}: {field} must be an integer from 0 to {MAX_UINT32}, got {value!r}")
    return value


def _bool(value: Any, where: str, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {field} must be true or false, got {value!r}")
    return value


def _join(value: Any, where: str, field: str) -> JoinType:
    if value is None:
        return "inner"
    if value not in JOIN_TYPES:
        raise ConfigError(f"{where}: {field} must be one of inner, outer, any; got {value!r}")
    return value  # type: ignore[no-any-return]


def _tensor_map(value: Any, where: str, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {field} must be a mapping of <ref>.<tensor> to a tensor name")
    for key, new in value.items():
        if not isinstance(key, str) or not isinstance(new, str) or not new:
            raise ConfigError(f"{where}: {field}[{key!r}] must map to a non-empty tensor name")
    return dict(value)


def _step(raw: Any, i: int, where: str) -> StepSpec:
    field = f"spec.steps[{i}]"
    step = _mapping(raw, where, field, _STEP_FIELDS)
    name = step.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: {field}.name is required")
    if len(name) > 63 or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: {field}.name {name!r} is not a valid Model name")
    batch = None
    if step.get("batch") is not None:
        b = _mapping(step["batch"], where, f"{field}.batch", _BATCH_FIELDS)
        batch = BatchSpec(
            size=_uint32(b.get("size"), where, f"{field}.batch.size"),
            window_ms=_uint32(b.get("windowMs"), where, f"{field}.batch.windowMs"),
            rolling=_bool(b.get("rolling"), where, f"{field}.batch.rolling"),
        )
    return StepSpec(
        name=name,
        inputs=_strings(step.get("inputs"), where, f"{field}.inputs"),
        tensor_map=_tensor_map(step.get("tensorMap"), where, f"{field}.tensorMap"),
        triggers=_strings(step.get("triggers"), where, f"{field}.triggers"),
        inputs_join_type=_join(step.get("inputsJoinType"), where, f"{field}.inputsJoinType"),
        triggers_join_type=_join(step.get("triggersJoinType"), where, f"{field}.triggersJoinType"),
        join_window_ms=_uint32(step.get("joinWindowMs"), where, f"{field}.joinWindowMs"),
        batch=batch,
    )


def _output(raw: Any, where: str) -> OutputSpec:
    out = _mapping(raw, where, "spec.output", _OUTPUT_FIELDS)
    return OutputSpec(
        steps=_strings(out.get("steps"), where, "spec.output.steps"),
        steps_join=_join(out.get("stepsJoin"), where, "spec.output.stepsJoin"),
        join_window_ms=_uint32(out.get("joinWindowMs"), where, "spec.output.joinWindowMs") or 0,
        tensor_map=_tensor_map(out.get("tensorMap"), where, "spec.output.tensorMap"),
    )


def _input(raw: Any, where: str) -> InputSpec:
    inp = _mapping(raw, where, "spec.input", _INPUT_FIELDS)
    spec = InputSpec(
        external_inputs=_strings(inp.get("externalInputs"), where, "spec.input.externalInputs"),
        external_triggers=_strings(inp.get("externalTriggers"), where, "spec.input.externalTriggers"),
        join_window_ms=_uint32(inp.get("joinWindowMs"), where, "spec.input.joinWindowMs"),
        join_type=_join(inp.get("joinType"), where, "spec.input.joinType"),
        triggers_join_type=_join(inp.get("triggersJoinType"), where, "spec.input.triggersJoinType"),
        tensor_map=_tensor_map(inp.get("tensorMap"), where, "spec.input.tensorMap"),
    )
    if not spec.external_inputs:
        raise ConfigError(f"{where}: spec.input.externalInputs must name at least one input")
    return spec


def _timeout(annotations: Mapping[str, str], where: str) -> float | None:
    raw = annotations.get(TIMEOUT_ANNOTATION)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{where}: metadata.annotations[{TIMEOUT_ANNOTATION}] must be a positive number of seconds, "
            f"got {raw!r}"
        )
    return value


def _pipeline(doc: Mapping[str, Any]) -> PipelineManifest:
    where, meta = _metadata(doc, "Pipeline")
    spec = _mapping(doc["spec"], where, "spec", _SPEC_FIELDS) if doc.get("spec") is not None else {}
    raw_steps = spec.get("steps")
    if raw_steps is None or raw_steps == []:
        raise ConfigError(f"{where}: spec.steps must list at least one step")
    if not isinstance(raw_steps, list):
        raise ConfigError(f"{where}: spec.steps must be a list of steps")
    dataflow = spec.get("dataflow")
    if dataflow is not None:
        _mapping(dataflow, where, "spec.dataflow", {"cleanTopicsOnDelete"})
    manifest = PipelineManifest(
        steps=[_step(s, i, where) for i, s in enumerate(raw_steps)],
        output=_output(spec["output"], where) if spec.get("output") is not None else None,
        input=_input(spec["input"], where) if spec.get("input") is not None else None,
        allow_cycles=_bool(spec.get("allowCycles"), where, "spec.allowCycles"),
        max_step_revisits=_uint32(spec.get("maxStepRevisits"), where, "spec.maxStepRevisits") or 0,
        clean_topics_on_delete=_bool(
            (dataflow or {}).get("cleanTopicsOnDelete"), where, "spec.dataflow.cleanTopicsOnDelete"
        ),
        timeout_s=_timeout(meta["annotations"], where),
        **meta,
    )
    _check_graph(manifest, where)
    _check_join_fields(manifest, raw_steps, spec.get("output"), spec.get("input"), where)
    return manifest


def _ref(text: str, pipeline: str, where: str, field: str) -> Ref:
    try:
        return parse_ref(text, pipeline)
    except ValueError as exc:
        raise ConfigError(f"{where}: {field} {text!r} {exc}") from None


def _check_tensor_map(
    tensor_map: Mapping[str, str], m: PipelineManifest, steps: set[str], where: str, field: str
) -> None:
    for key in tensor_map:
        try:
            ref = parse_tensor_key(key, m.name)
        except ValueError as exc:
            raise ConfigError(f"{where}: {field} key {key!r} {exc}") from None
        if not ref.pipeline and ref.name not in steps:
            raise ConfigError(f"{where}: {field} key {key!r} refers to {ref.name!r}, which is not a step")


def _find_cycle(deps: Mapping[str, set[str]]) -> list[str] | None:
    """A list of steps each reading the next (first == last), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(step: str) -> list[str] | None:
        path.append(step)
        for dep in sorted(deps[step]):
            if dep in path:
                return [*path[path.index(dep) :], dep]
            if dep not in done and (found := visit(dep)):
                return found
        path.pop()
        done.add(step)
        return None

    for step in deps:
        if step not in done and (found := visit(step)):
            return found
    return None


def _check_graph(m: PipelineManifest, where: str) -> None:
    seen: dict[str, int] = {}
    for i, step in enumerate(m.steps):
        if step.name == m.name:
            raise ConfigError(
                f"{where}: spec.steps[{i}].name {step.name!r} must differ from the pipeline's name"
            )
        if step.name in seen:
            raise ConfigError(
                f"{where}: spec.steps[{i}].name {step.name!r} repeats spec.steps[{seen[step.name]}]"
            )
        seen[step.name] = i
    names = set(seen)
    deps: dict[str, set[str]] = {}
    for i, step in enumerate(m.steps):
        deps[step.name] = set()
        for kind, refs in (("inputs", step.inputs), ("triggers", step.triggers)):
            for j, text in enumerate(refs):
                field = f"spec.steps[{i}].{kind}[{j}]"
                ref = _ref(text, m.name, where, field)
                if ref.pipeline:
                    continue
                if ref.name not in names:
                    raise ConfigError(
                        f"{where}: {field} {text!r} refers to {ref.name!r}, which is not a step"
                    )
                deps[step.name].add(ref.name)
        _check_tensor_map(step.tensor_map, m, names, where, f"spec.steps[{i}].tensorMap")
    if m.output is not None:
        for j, text in enumerate(m.output.steps):
            ref = _ref(text, m.name, where, f"spec.output.steps[{j}]")
            if ref.pipeline or ref.name not in names:
                raise ConfigError(
                    f"{where}: spec.output.steps[{j}] {text!r} refers to {ref.name!r}, which is not a step"
                )
        _check_tensor_map(m.output.tensor_map, m, names, where, "spec.output.tensorMap")
    if not m.allow_cycles and (cycle := _find_cycle(deps)):
        reads = ", ".join(f"{a} reads {b}" for a, b in itertools.pairwise(cycle))
        raise ConfigError(f"{where}: spec.steps form a cycle ({reads})")


def _external_groups(refs: list[str]) -> set[tuple[str, str, str]]:
    groups: set[tuple[str, str, str]] = set()
    for text in refs:
        try:
            source, ref = parse_external_ref(text)
        except ValueError:
            continue  # validate_for_chains names the bad syntax
        groups.add((source, ref.name, ref.direction))
    return groups


def _check_join_fields(m: PipelineManifest, raw_steps: list[Any], out: Any, inp: Any, where: str) -> None:
    """A join type or window where nothing is joined (one input, no triggers) is refused: it would
    silently mean nothing, and is most likely a misplaced or forgotten input."""

    def refuse(field: str, what: str) -> None:
        raise ConfigError(
            f"{where}: {field} has no effect: {what}; a join needs two or more sources"
            " (a step's inputs, its triggers or the output's steps, counted by topic)"
        )

    for i, (step, raw) in enumerate(zip(m.steps, raw_steps, strict=True)):
        inputs = len(group_sources(step.inputs or [m.name], m.name))
        triggers = len(group_sources(step.triggers, m.name))
        field = f"spec.steps[{i}]"
        if raw.get("inputsJoinType") is not None and inputs < 2:
            refuse(f"{field}.inputsJoinType", f"step {step.name} reads one input")
        if raw.get("triggersJoinType") is not None and triggers < 2:
            refuse(f"{field}.triggersJoinType", f"step {step.name} has {triggers or 'no'} trigger")
        if raw.get("joinWindowMs") is not None and inputs < 2 and not triggers:
            refuse(f"{field}.joinWindowMs", f"step {step.name} reads one input and has no triggers")
    if m.output is not None and isinstance(out, dict):
        steps = len(group_sources(m.output.steps or [m.name], m.name))
        for name in ("stepsJoin", "joinWindowMs"):
            if out.get(name) is not None and steps < 2:
                refuse(f"spec.output.{name}", "the output reads one step")
    if m.input is not None and isinstance(inp, dict):
        inputs = len(_external_groups(m.input.external_inputs))
        triggers = len(_external_groups(m.input.external_triggers))
        if inp.get("joinType") is not None and inputs < 2:
            refuse("spec.input.joinType", "the pipeline reads one external input")
        if inp.get("triggersJoinType") is not None and triggers < 2:
            refuse("spec.input.triggersJoinType", f"the pipeline has {triggers or 'no'} external trigger")
        if inp.get("joinWindowMs") is not None and inputs < 2 and not triggers:
            refuse("spec.input.joinWindowMs", "the pipeline reads one external input and has no triggers")


def group_sources(refs: list[str], pipeline: str) -> dict[Ref, frozenset[str] | None]:
    """The sources refs read, grouped by topic (Ref without tensor) with the tensors selected from each.

    As Seldon's dataflow engine does: a topic named with tensors reads only those tensors, even when it
    is also named whole; a topic named only whole reads every tensor (None).
    """
    groups: dict[Ref, set[str]] = {}
    for text in refs:
        ref = parse_ref(text, pipeline)
        tensors = groups.setdefault(Ref(ref.name, ref.direction, None, ref.pipeline), set())
        if ref.tensor is not None:
            tensors.add(ref.tensor)
    return {ref: frozenset(t) if t else None for ref, t in groups.items()}


def validate_for_chains(m: PipelineManifest) -> None:
    """Reject what this release cannot run: batching joined, rolling or cyclic steps; check the external
    references' syntax."""
    where = f"Pipeline {m.name}"
    if m.input is not None:
        named = [("externalInputs", m.input.external_inputs), ("externalTriggers", m.input.external_triggers)]
        refs = [(f"spec.input.{kind}[{i}]", text) for kind, texts in named for i, text in enumerate(texts)]
        for field, text in refs:
            try:
                source, _ = parse_external_ref(text)
            except ValueError as exc:
                raise ConfigError(f"{where}: {field} {text!r} {exc}") from None
            if source == m.name:
                raise ConfigError(f"{where}: {field} {text!r} reads the pipeline itself")
        for key in m.input.tensor_map:
            try:
                _, ref = parse_external_ref(key)
            except ValueError as exc:
                raise ConfigError(f"{where}: spec.input.tensorMap key {key!r} {exc}") from None
            if ref.tensor is None:
                raise ConfigError(f"{where}: spec.input.tensorMap key {key!r} names no tensor")
    for i, step in enumerate(m.steps):
        if step.batch is not None and step.batch.size:
            field = f"spec.steps[{i}].batch"
            if m.allow_cycles:
                raise ConfigError(
                    f"{where}: {field}: batching in a pipeline with allowCycles is not supported"
                )
            if step.batch.rolling:
                raise ConfigError(f"{where}: {field}.rolling is not supported yet")
            if step.triggers or len(group_sources(step.inputs or [m.name], m.name)) > 1:
                raise ConfigError(
                    f"{where}: {field}: batching a step that joins inputs or has triggers "
                    "is not supported yet"
                )


def external_sources(m: PipelineManifest) -> set[str]:
    """The pipelines this one reads through ``input.externalInputs``."""
    if m.input is None:
        return set()
    return {parse_external_ref(text)[0] for text in [*m.input.external_inputs, *m.input.external_triggers]}


def find_pipeline_cycle(reads: Mapping[str, set[str]]) -> list[str] | None:
    """A cycle among pipelines reading each other (name → the pipelines it reads), as [a, b, ..., a]."""
    return _find_cycle({name: {r for r in read if r in reads} for name, read in reads.items()})


def parse_pipelines(text: str) -> list[PipelineManifest]:
    """Every Pipeline document in ``text`` (YAML, one or many docs), parsed and checked as Seldon does.

    Checked: unknown fields (named by path), types, duplicate or pipeline-named steps, reference
    syntax, references to missing steps, cycles (unless allowCycles), the headrace.io/timeout-seconds
    annotation. What this release cannot run yet is validate_for_chains's business.
    """
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    out: list[PipelineManifest] = []
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ConfigError(f"document {i + 1}: expected a mapping with apiVersion, kind, metadata, spec")
        kind, api = doc.get("kind"), doc.get("apiVersion")
        if kind != "Pipeline":
            raise ConfigError(f"document {i + 1}: kind {kind!r} is not a Pipeline")
        if api != API_VERSION:
            raise ConfigError(
                f"document {i + 1} (Pipeline): apiVersion {api!r} is not supported ({API_VERSION})"
            )
        manifest = _pipeline(doc)
        if manifest.name in seen:
            raise ConfigError(f"Pipeline {manifest.name}: defined more than once")
        seen.add(manifest.name)
        out.append(manifest)
    return out
