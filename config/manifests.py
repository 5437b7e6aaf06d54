"""Seldon Model/Server manifests (mlops.seldon.io/v1alpha1): parsing, validation and the static servers."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
import yaml

from headrace.config.errors import ConfigError
from headrace.config.settings import Settings

API_VERSION = "mlops.seldon.io/v1alpha1"
HEADRACE_SERVER_CONFIG = "headrace"
HEADRACE_CAPABILITIES: tuple[str, ...] = ("headrace", "python", "sklearn", "numpy")
DEFAULT_SERVER = "headrace"
MAX_REPLICAS = 2**32 - 1

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_QUANTITY_RE = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?)$"
)
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}

_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}  # status (output only) is ignored
_METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}
_MODEL_FIELDS = {
    "storageUri",
    "requirements",
    "modelType",
    "memory",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "server",
    "parameters",
    "dataflow",
}
_MODEL_UNSUPPORTED = {
    "artifactVersion",
    "schemaUri",
    "secretName",
    "logger",
    "explainer",
    "llm",
    "preloaded",
    "dedicated",
}
_SERVER_FIELDS = {
    "serverConfig",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "capabilities",
    "extraCapabilities",
}
_SERVER_UNSUPPORTED = {
    "imageOverrides",
    "podSpec",
    "statefulSetPersistentVolumeClaimRetentionPolicy",
    "deploymentStrategy",
    "disableAutoUpdate",
}


GATEWAY_WORKERS_PARAM = "modelgateway.workers"


class ModelManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated Seldon Model; ``path`` is the resolved absolute model folder."""

    name: str
    storage_uri: str
    path: str
    namespace: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    requirements: list[str] = []  # modelType appended, as Seldon does
    memory: int = 0
    replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = MAX_REPLICAS
    server: str = ""
    parameters: dict[str, str] = {}
    clean_topics_on_delete: bool = False
    kind: str = "Model"

    @property
    def inline(self) -> bool:
        """Inline models run inside every worker instead of on a server replica."""
        return self.parameters.get("inline", "").strip().lower() == "true"

    @property
    def gateway_workers(self) -> int:
        """Parameter ``modelgateway.workers``: this model's own model-gateway concurrency (0: the
        global MODELGATEWAY_NUM_WORKERS)."""
        raw = self.parameters.get(GATEWAY_WORKERS_PARAM, "").strip()
        return int(raw) if raw.isdigit() else 0

    def spec_key(self) -> bytes:
        """What decides the generation: everything but labels and annotations (as k8s does)."""
        return msgspec.json.encode(msgspec.structs.replace(self, labels={}, annotations={}))


class ServerManifest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated Seldon Server with its effective capabilities."""

    name: str
    namespace: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    server_config: str = HEADRACE_SERVER_CONFIG
    replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = MAX_REPLICAS
    capabilities: list[str] = msgspec.field(default_factory=lambda: list(HEADRACE_CAPABILITIES))
    kind: str = "Server"


Manifest = ModelManifest | ServerManifest


def parse_quantity(value: Any, where: str = "quantity") -> int:
    """A Kubernetes Quantity ("100Ki", "1.5Gi", "1e9", 512) in bytes, rounded up."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a quantity")
    if isinstance(value, int):
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        match = _QUANTITY_RE.match(value.strip())
        if not match:
            raise ConfigError(f"{where}: {value!r} is not a quantity (e.g. 512, 100Ki, 1.5Gi, 2G)")
        digits, exponent, suffix = match.groups()
        number = float(digits) * (10 ** int(exponent[1:]) if exponent else _SUFFIX[suffix or ""])
    else:
        raise ConfigError(f"{where}: {value!r} is not a quantity")
    if number < 0 or not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} must be a non-negative quantity")
    return math.ceil(number)


def validated_scaling(
    replicas: Any, min_replicas: Any, max_replicas: Any, where: str
) -> tuple[int, int, int]:
    """Seldon's GetValidatedScalingSpec: defaults 1/0/2^32-1; unset replicas follow minReplicas."""
    for field, value in (
        ("replicas", replicas),
        ("minReplicas", min_replicas),
        ("maxReplicas", max_replicas),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ConfigError(f"{where}: spec.{field} must be a non-negative integer, got {value!r}")
    low = min_replicas if min_replicas is not None else 0
    high = max_replicas if max_replicas is not None else MAX_REPLICAS
    if replicas is None:
        replicas = low if min_replicas is not None and low > 0 else 1
    if replicas < low:
        raise ConfigError(f"{where}: spec.replicas ({replicas}) is less than spec.minReplicas ({low})")
    if low > high:
        raise ConfigError(f"{where}: spec.minReplicas ({low}) is greater than spec.maxReplicas ({high})")
    if replicas > high:
        raise ConfigError(f"{where}: spec.replicas ({replicas}) is greater than spec.maxReplicas ({high})")
    if replicas < 1:
        raise ConfigError(f"{where}: spec.replicas must be at least 1 (scaling to zero is not supported)")
    return replicas, low, high


def resolve_storage_uri(uri: Any, base_dir: str | None, where: str) -> str:
    """A local folder from ``file:///abs``, ``/abs`` or a path relative to the manifest's directory."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"{where}: spec.storageUri must be a non-empty string")
    uri = uri.strip()
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{where}: spec.storageUri {uri}: file:// URIs must name a local path")
        path = unquote(parts.path)
    elif uri.startswith("file:"):
        path = unquote(uri[len("file:") :])
    elif _SCHEME_RE.match(uri):
        raise ConfigError(f"{where}: spec.storageUri {uri}: only local paths and file:// URIs are supported")
    else:
        path = os.path.expanduser(uri)
    if not os.path.isabs(path):
        if base_dir is None:
            raise ConfigError(f"{where}: spec.storageUri {uri} is relative; send an absolute path")
        path = os.path.join(base_dir, path)
    return os.path.normpath(os.path.abspath(path))


def detect_runtime(manifest: ModelManifest) -> str:
    """ "sklearn" if required, else "python" for a model.py, else "sklearn" for a *.joblib/*.pkl file."""
    if "sklearn" in manifest.requirements:
        return "sklearn"
    folder = Path(manifest.path)
    if not folder.is_dir():
        raise ConfigError(f"storageUri {manifest.storage_uri}: folder {folder} does not exist")
    if (folder / "model.py").is_file():
        return "python"
    if any(p.suffix in (".joblib", ".pkl") for p in folder.iterdir() if p.is_file()):
        return "sklearn"
    raise ConfigError(f"storageUri {manifest.storage_uri}: {folder} has no model.py, *.joblib or *.pkl file")


def _check_fields(
    block: Mapping[str, Any], supported: set[str], unsupported: set[str], where: str, prefix: str
) -> None:
    for key in block:
        if key in supported:
            continue
        value = block[key]
        if key in unsupported:
            if value in (None, False, "", [], {}):
                continue  # asks for nothing headrace would have to honour
            raise ConfigError(f"{where}: {prefix}{key} is not supported by headrace")
        raise ConfigError(f"{where}: {prefix}{key} is not a known field")


def _strings(value: Any, where: str, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {field} must be a list of strings")
    return list(value)


def _string_map(value: Any, where: str, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {field} must be a mapping")
    return {str(k): _scalar(v) for k, v in value.items()}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _metadata(doc: Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ConfigError(f"{kind}: metadata with a name is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind}: metadata.name is required")
    if len(name) > 63 or not _NAME_RE.match(name):
        raise ConfigError(
            f"{kind} {name!r}: metadata.name must be lowercase letters, digits and '-', "
            "start and end with a letter or digit, at most 63 characters"
        )
    where = f"{kind} {name}"
    _check_fields(doc, _TOP_FIELDS, set(), where, "")
    _check_fields(meta, _METADATA_FIELDS, set(), where, "metadata.")
    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        raise ConfigError(f"{where}: metadata.namespace must be a string")
    extra = {
        "name": name,
        "namespace": namespace,
        "labels": _string_map(meta.get("labels"), where, "metadata.labels"),
        "annotations": _string_map(meta.get("annotations"), where, "metadata.annotations"),
    }
    return where, extra


def _parameters(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ConfigError(f"{where}: spec.parameters must be a list of {{name, value}}")
    out: dict[str, str] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: spec.parameters[{i}] must be a mapping with name and value")
        _check_fields(item, {"name", "value"}, set(), where, f"spec.parameters[{i}].")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: spec.parameters[{i}].name is required")
        out[name] = _scalar(item.get("value"))
    return out


def _model(doc: Mapping[str, Any], base_dir: str | None) -> ModelManifest:
    where, meta = _metadata(doc, "Model")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: spec is required")
    _check_fields(spec, _MODEL_FIELDS, _MODEL_UNSUPPORTED, where, "spec.")
    if "storageUri" not in spec:
        raise ConfigError(f"{where}: spec.storageUri is required")
    path = resolve_storage_uri(spec["storageUri"], base_dir, where)
    requirements = _strings(spec.get("requirements"), where, "spec.requirements")
    model_type = spec.get("modelType")
    if model_type is not None:
        if not isinstance(model_type, str) or not model_type:
            raise ConfigError(f"{where}: spec.modelType must be a string")
        if model_type not in requirements:
            requirements.append(model_type)
    memory = 0
    if spec.get("memory") is not None:
        memory = parse_quantity(spec["memory"], f"{where}: spec.memory")
    replicas, low, high = validated_scaling(
        spec.get("replicas"), spec.get("minReplicas"), spec.get("maxReplicas"), where
    )
    server = spec.get("server") or ""
    if not isinstance(server, str):
        raise ConfigError(f"{where}: spec.server must be a string")
    dataflow = spec.get("dataflow") or {}
    if not isinstance(dataflow, dict):
        raise ConfigError(f"{where}: spec.dataflow must be a mapping")
    _check_fields(dataflow, {"cleanTopicsOnDelete"}, set(), where, "spec.dataflow.")
    clean = dataflow.get("cleanTopicsOnDelete", False)
    if not isinstance(clean, bool):
        raise ConfigError(f"{where}: spec.dataflow.cleanTopicsOnDelete must be true or false")
    return ModelManifest(
        storage_uri=str(spec["storageUri"]),
        path=path,
        requirements=requirements,
        memory=memory,
        replicas=replicas,
        min_replicas=low,
        max_replicas=high,
        server=server,
        parameters=_parameters(spec.get("parameters"), where),
        clean_topics_on_delete=clean,
        **meta,
    )


def _server(doc: Mapping[str, Any]) -> ServerManifest:
    where, meta = _metadata(doc, "Server")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: spec must be a mapping")
    _check_fields(spec, _SERVER_FIELDS, _SERVER_UNSUPPORTED, where, "spec.")
    config = spec.get("serverConfig") or HEADRACE_SERVER_CONFIG
    if config != HEADRACE_SERVER_CONFIG:
        raise ConfigError(
            f"{where}: spec.serverConfig {config!r} is not supported by headrace "
            f"(use {HEADRACE_SERVER_CONFIG!r})"
        )
    replicas, low, high = validated_scaling(
        spec.get("replicas"), spec.get("minReplicas"), spec.get("maxReplicas"), where
    )
    if "capabilities" in spec and spec["capabilities"] is not None:
        capabilities = _strings(spec["capabilities"], where, "spec.capabilities")
    else:
        capabilities = list(HEADRACE_CAPABILITIES)
    for extra in _strings(spec.get("extraCapabilities"), where, "spec.extraCapabilities"):
        if extra not in capabilities:
            capabilities.append(extra)
    return ServerManifest(
        server_config=config,
        replicas=replicas,
        min_replicas=low,
        max_replicas=high,
        capabilities=capabilities,
        **meta,
    )


def parse_manifests(text: str, base_dir: str | None = None) -> list[Manifest]:
    """Every Model and Server document in ``text`` (YAML, one or many docs), validated."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None
    out: list[Manifest] = []
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ConfigError(f"document {i + 1}: expected a mapping with apiVersion, kind, metadata, spec")
        kind = doc.get("kind")
        api = doc.get("apiVersion")
        if kind not in ("Model", "Server"):
            raise ConfigError(f"document {i + 1}: kind {kind!r} is not supported (Model or Server)")
        if api != API_VERSION:
            raise ConfigError(
                f"document {i + 1} ({kind}): apiVersion {api!r} is not supported ({API_VERSION})"
            )
        manifest: Manifest = _model(doc, base_dir) if kind == "Model" else _server(doc)
        key = (manifest.kind, manifest.name)
        if key in seen:
            raise ConfigError(f"{manifest.kind} {manifest.name}: defined more than once")
        seen.add(key)
        out.append(manifest)
    return out


def manifest_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such manifest file or directory")
    return files


def load_manifest_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Manifest]:
    """Manifests from files and directories (their *.yaml/*.yml); relative storageUri per file's dir."""
    out: list[Manifest] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in manifest_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        try:
            manifests = parse_manifests(text, str(path.resolve().parent))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        for manifest in manifests:
            key = (manifest.kind, manifest.name)
            if key in seen:
                raise ConfigError(f"{path}: {manifest.kind} {manifest.name} is also defined in {seen[key]}")
            seen[key] = path
            out.append(manifest)
    return out


def replica_socket(settings: Settings, server: str, index: int) -> str:
    """The unix socket a model-server replica listens on."""
    return str(settings.run_dir / f"{server}-{index}.sock")


def servers_from_settings(settings: Settings) -> list[ServerManifest]:
    """The static servers: those in settings.server_files, else the built-in ``headrace`` server."""
    if not settings.server_files:
        replicas = settings.server_replicas
        if replicas < 1:
            raise ConfigError(f"server_replicas must be at least 1, got {replicas}")
        return [ServerManifest(name=DEFAULT_SERVER, replicas=replicas)]
    servers: list[ServerManifest] = []
    for manifest in load_manifest_paths(settings.server_files):
        if not isinstance(manifest, ServerManifest):
            raise ConfigError(f"server files: Model {manifest.name} is not a Server manifest")
        servers.append(manifest)
    if not servers:
        raise ConfigError("server files: no Server manifest found")
    return servers
