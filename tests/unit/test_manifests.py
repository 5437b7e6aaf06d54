"""Seldon Model/Server manifests: supported fields, rejections naming the field, quantities, replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.config.errors import ConfigError
from headrace.config.manifests import (
    HEADRACE_CAPABILITIES,
    ModelManifest,
    ServerManifest,
    detect_runtime,
    load_manifest_paths,
    parse_manifests,
    parse_quantity,
    servers_from_settings,
    validated_scaling,
)
from headrace.config.settings import load_settings

HEAD = "apiVersion: mlops.seldon.io/v1alpha1\n"


def model_doc(spec: str, name: str = "iris", meta: str = "") -> str:
    return f"{HEAD}kind: Model\nmetadata:\n  name: {name}\n{meta}spec:\n{spec}"


def one_model(spec: str, base_dir: str | None = "/models", **kw: str) -> ModelManifest:
    [m] = parse_manifests(model_doc(spec, **kw), base_dir)
    assert isinstance(m, ModelManifest)
    return m


def server_doc(spec: str, name: str = "mine") -> str:
    return f"{HEAD}kind: Server\nmetadata:\n  name: {name}\nspec:\n{spec}"


def one_server(spec: str) -> ServerManifest:
    [s] = parse_manifests(server_doc(spec))
    assert isinstance(s, ServerManifest)
    return s


def test_every_supported_model_field() -> None:
    m = one_model(
        "  storageUri: file:///srv/iris\n"
        "  requirements: [sklearn]\n"
        "  modelType: numpy\n"
        "  memory: 100Ki\n"
        "  replicas: 2\n"
        "  minReplicas: 1\n"
        "  maxReplicas: 3\n"
        "  server: headrace\n"
        "  parameters:\n  - name: inline\n    value: 'true'\n  - {name: n, value: 3}\n"
        "  dataflow:\n    cleanTopicsOnDelete: true\n",
        meta="  namespace: seldon-mesh\n  labels: {team: a}\n  annotations: {note: x}\n",
    )
    assert m.name == "iris" and m.namespace == "seldon-mesh"
    assert m.labels == {"team": "a"} and m.annotations == {"note": "x"}
    assert m.path == "/srv/iris" and m.storage_uri == "file:///srv/iris"
    assert m.requirements == ["sklearn", "numpy"]
    assert m.memory == 100 * 1024
    assert (m.replicas, m.min_replicas, m.max_replicas) == (2, 1, 3)
    assert m.server == "headrace"
    assert m.parameters == {"inline": "true", "n": "3"}
    assert m.inline
    assert m.clean_topics_on_delete


def test_defaults_and_status_ignored() -> None:
    m = one_model("  storageUri: /srv/iris\n")
    assert (m.replicas, m.min_replicas, m.memory, m.server, m.inline) == (1, 0, 0, "", False)
    text = model_doc("  storageUri: /srv/iris\n") + "status:\n  replicas: 1\n"
    assert parse_manifests(text)[0].name == "iris"


def test_model_type_not_duplicated() -> None:
    assert one_model("  storageUri: /a\n  requirements: [sklearn]\n  modelType: sklearn\n").requirements == [
        "sklearn"
    ]


@pytest.mark.parametrize(
    "field",
    ["artifactVersion: v1", "schemaUri: gs://x", "secretName: s", "logger: {percent: 10}",
     "explainer: {type: anchor_tabular}", "llm: {modelRef: x}", "preloaded: true", "dedicated: true"],
)  # fmt: skip
def test_unsupported_model_fields_are_named(field: str) -> None:
    key = field.split(":")[0]
    with pytest.raises(ConfigError, match=rf"Model iris: spec\.{key} is not supported by headrace"):
        one_model(f"  storageUri: /a\n  {field}\n")


def test_unsupported_field_with_empty_value_is_harmless() -> None:
    assert one_model("  storageUri: /a\n  dedicated: false\n  logger: null\n").name == "iris"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (model_doc("  storageUri: /a\n  foo: 1\n"), r"spec\.foo"),
        (model_doc("  storageUri: /a\n  dataflow: {other: 1}\n"), r"spec\.dataflow\.other"),
        (model_doc("  storageUri: /a\n  parameters: [{name: a, x: c}]\n"), r"spec\.parameters\[0\]\.x"),
        (model_doc("  storageUri: /a\n", meta="  uid: abc\n"), r"metadata\.uid"),
        (model_doc("  storageUri: /a\n") + "extra: 1\n", r"Model iris: extra"),
        (server_doc("  podSpec: {}\n  imageOverrides: {agent: x}\n"), r"spec\.imageOverrides"),
        (server_doc("  bogus: 1\n"), r"Server mine: spec\.bogus"),
    ],
)  # fmt: skip
def test_unknown_fields_are_named(text: str, path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        parse_manifests(text, "/m")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "kind: Pipeline\nmetadata: {name: p}\nspec: {}\n", "kind 'Pipeline' is not supported"),
        ("apiVersion: v1\nkind: Model\nmetadata: {name: p}\nspec: {}\n", "apiVersion 'v1' is not supported"),
        (HEAD + "kind: Model\nspec: {storageUri: /a}\n", "metadata"),
        (model_doc("  storageUri: /a\n", name="Bad_Name"), "metadata.name must be lowercase"),
        (model_doc("  requirements: [a]\n"), r"spec\.storageUri is required"),
        (model_doc("  storageUri: gs://models/iris\n"), "only local paths and file:// URIs are supported"),
        (model_doc("  storageUri: s3://b/k\n"), "only local paths and file:// URIs are supported"),
        (model_doc("  storageUri: file://otherhost/x\n"), "local path"),
        (model_doc("  storageUri: /a\n  memory: lots\n"), r"spec\.memory"),
        (model_doc("  storageUri: /a\n  replicas: two\n"), r"spec\.replicas must be"),
        (model_doc("  storageUri: /a\n  requirements: sklearn\n"), r"spec\.requirements must be a list"),
        ("a: [unclosed", "invalid YAML"),
        ("- 1\n", "expected a mapping"),
        (model_doc("  storageUri: /a\n") + "---\n" + model_doc("  storageUri: /b\n"), "more than once"),
    ],
)  # fmt: skip
def test_rejections(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_manifests(text, "/m")


def test_storage_uri_forms(tmp_path: Path) -> None:
    assert one_model("  storageUri: ./iris\n", base_dir=str(tmp_path)).path == str(tmp_path / "iris")
    assert one_model("  storageUri: ../x/iris\n", base_dir=str(tmp_path)).path == str(
        tmp_path.parent / "x/iris"
    )
    assert one_model("  storageUri: file:///a/b/../c\n").path == "/a/c"
    assert one_model("  storageUri: file://localhost/a%20b\n").path == "/a b"
    with pytest.raises(ConfigError, match="relative"):
        one_model("  storageUri: iris\n", base_dir=None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (512, 512), ("512", 512), ("100Ki", 102400), ("1.5Gi", 3 * 2**29), ("10Mi", 10 * 2**20),
        ("2G", 2 * 10**9), ("1k", 1000), ("3M", 3 * 10**6), ("1T", 10**12), ("1Ti", 2**40),
        ("1e3", 1000), ("1.5", 2), ("0", 0),
    ],
)  # fmt: skip
def test_quantities(value: object, expected: int) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value", ["1KB", "-1Ki", "Gi", "", True, [1]])
def test_bad_quantities(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_quantity(value, "spec.memory")


def test_scaling_rules() -> None:
    assert validated_scaling(None, None, None, "m") == (1, 0, 2**32 - 1)
    assert validated_scaling(None, 3, None, "m") == (3, 3, 2**32 - 1)
    assert validated_scaling(2, 1, 4, "m") == (2, 1, 4)
    with pytest.raises(ConfigError, match=r"spec\.replicas \(1\) is less than spec\.minReplicas \(2\)"):
        validated_scaling(1, 2, None, "m")
    with pytest.raises(ConfigError, match=r"spec\.minReplicas \(3\) is greater than spec\.maxReplicas \(2\)"):
        validated_scaling(None, 3, 2, "m")
    with pytest.raises(ConfigError, match="at least 1"):
        validated_scaling(0, None, None, "m")


def test_server_fields() -> None:
    s = one_server("  serverConfig: headrace\n  replicas: 2\n  extraCapabilities: [gpu]\n")
    assert s.replicas == 2 and s.capabilities == [*HEADRACE_CAPABILITIES, "gpu"]
    assert one_server("  capabilities: [a, b]\n  extraCapabilities: [c]\n").capabilities == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"Server mine: spec\.serverConfig 'mlserver' is not supported"):
        one_server("  serverConfig: mlserver\n")
    with pytest.raises(ConfigError, match="'triton'"):
        one_server("  serverConfig: triton\n")


def test_multi_doc_and_paths(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        model_doc("  storageUri: ./m1\n", name="m1") + "---\n" + model_doc("  storageUri: m2\n", name="m2")
    )
    (tmp_path / "b.yml").write_text(server_doc("  replicas: 1\n"))
    (tmp_path / "ignored.txt").write_text("x")
    found = load_manifest_paths([tmp_path])
    assert [(m.kind, m.name) for m in found] == [("Model", "m1"), ("Model", "m2"), ("Server", "mine")]
    assert isinstance(found[1], ModelManifest) and found[1].path == str(tmp_path / "m2")
    (tmp_path / "c.yaml").write_text(model_doc("  storageUri: gs://x\n", name="m3"))
    with pytest.raises(ConfigError, match=r"c\.yaml: Model m3: spec\.storageUri"):
        load_manifest_paths([tmp_path])
    with pytest.raises(ConfigError, match="no such manifest"):
        load_manifest_paths([tmp_path / "missing.yaml"])


def test_servers_from_settings(tmp_path: Path) -> None:
    [builtin] = servers_from_settings(load_settings(overrides={"server_replicas": 3}, environ={}))
    assert (builtin.name, builtin.replicas, builtin.capabilities) == (
        "headrace",
        3,
        list(HEADRACE_CAPABILITIES),
    )
    path = tmp_path / "s.yaml"
    path.write_text(server_doc("  replicas: 2\n", name="gpu") + "---\n" + server_doc("  {}\n", name="cpu"))
    servers = servers_from_settings(load_settings(overrides={"server_files": (str(path),)}, environ={}))
    assert [(s.name, s.replicas) for s in servers] == [("gpu", 2), ("cpu", 1)]


def test_detect_runtime(tmp_path: Path) -> None:
    def manifest(spec: str) -> ModelManifest:
        return one_model(f"  storageUri: {tmp_path}\n{spec}")

    assert detect_runtime(manifest("  requirements: [sklearn]\n")) == "sklearn"
    with pytest.raises(ConfigError, match=r"no model\.py, \*\.joblib or \*\.pkl"):
        detect_runtime(manifest(""))
    (tmp_path / "model.joblib").write_bytes(b"x")
    assert detect_runtime(manifest("")) == "sklearn"
    (tmp_path / "model.py").write_text("")
    assert detect_runtime(manifest("")) == "python"
    with pytest.raises(ConfigError, match="does not exist"):
        detect_runtime(one_model(f"  storageUri: {tmp_path}/nope\n"))
