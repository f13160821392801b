"""deploy/kserve: the ServingRuntime and the InferenceService example, checked statically.

The KServe objects are validated against KServe's published CRD schemas (the ServingRuntime,
serving.kserve.io/v1alpha1, and InferenceService, v1beta1, ``openAPIV3Schema`` of a KServe
release, vendored in tests/data/kserve/ with their source), read as strictly as the API server's
strict field validation (``kubectl apply``'s default): an unknown field anywhere is an error. The
containers are validated again as a Pod, and the metadata as ObjectMeta, against Kubernetes' own
schema (kubernetes-validate); and the files against the code: real settings, the repository
where KServe's storage initializer puts the model, the ports the server opens.
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
CRDS = ROOT / "tests" / "data" / "kserve"
SETTINGS = {f"ORTSERVE_{name.upper()}" for name in Settings.model_fields}
# KServe's protocol names (pkg/constants: ProtocolV1, ProtocolV2, ProtocolGRPCV1, ProtocolGRPCV2);
# the CRD types protocolVersions as free strings
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MANIFESTS = {"servingruntime.yaml": "servingruntimes", "inferenceservice.yaml": "inferenceservices"}


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KSERVE / name).read_text())
    return document


def runtime() -> dict[str, Any]:
    return load("servingruntime.yaml")


def service() -> dict[str, Any]:
    return load("inferenceservice.yaml")


# -- KServe's CRD schemas, strictly ----------------------------------------------------------------
def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as a JSON Schema that rejects what the API server rejects
    under strict field validation:

    - an object is closed (``additionalProperties: false``) unless it says otherwise:
      ``additionalProperties`` (a map) or ``x-kubernetes-preserve-unknown-fields: true``; an
      object with neither keeps no field at all (the server prunes or, strictly, rejects them);
    - ``x-kubernetes-int-or-string`` is an integer or a string (controller-gen also writes the
      ``anyOf``; it is added where it is missing);
    - the other ``x-kubernetes-*`` markers (list and map types, embedded resources) constrain
      how objects merge, not what a manifest may hold, and are dropped. KServe's CRDs carry no
      CEL ``x-kubernetes-validations`` (test_the_vendored_schemas_have_only_what_strict_reads).
    """
    out: dict[str, Any] = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    is_object = schema.get("type") == "object" or "properties" in schema
    if (
        is_object
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd(plural: str) -> dict[str, Any]:
    """The vendored CRD: ``source``, ``apiVersion``, ``kind``, ``openAPIV3Schema``."""
    (path,) = CRDS.glob(f"{plural}.*.json.gz")
    document: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return document


@cache
def validator(plural: str) -> Any:
    schema = strict(crd(plural)["openAPIV3Schema"])
    # ObjectMeta is the API server's own, not the CRD's (an empty object there): checked as
    # ObjectMeta by test_the_metadata_is_kubernetes_object_meta
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(plural: str, document: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator(plural).iter_errors(document)
    ]


def test_the_vendored_schemas_are_kserves_and_have_only_what_strict_reads() -> None:
    for plural in MANIFESTS.values():
        document = crd(plural)
        assert document["source"]["repository"] == "https://github.com/kserve/kserve"
        assert document["source"]["license"] == "Apache-2.0"
        text = json.dumps(document["openAPIV3Schema"])
        assert "x-kubernetes-validations" not in text  # CEL rules: not checked here
        assert '"nullable"' not in text  # OpenAPI's null: not mapped here
        assert document["source"]["tag"] in (CRDS / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_the_manifest_passes_kserves_published_crd_schema(name: str) -> None:
    document, plural = load(name), MANIFESTS[name]
    assert (document["apiVersion"], document["kind"]) == (
        crd(plural)["apiVersion"],
        crd(plural)["kind"],
    )
    assert schema_errors(plural, document) == []


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``document`` with ``value`` at ``path`` (dotted; numbers index lists)."""
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return changed


@pytest.mark.parametrize(
    ("name", "path", "value", "says"),
    [
        # unknown fields: at the top of the spec, in a model format, deep in the container
        ("servingruntime.yaml", "spec.protocolVersion", "v2", "protocolVersion"),
        ("servingruntime.yaml", "spec.supportedModelFormats.0.format", "onnx", "format"),
        ("servingruntime.yaml", "spec.containers.0.livenessProbe.grpcPort", 8001, "grpcPort"),
        ("servingruntime.yaml", "status", {"ready": True}, "ready"),
        ("inferenceservice.yaml", "spec.predictor.model.protocol", "v2", "protocol"),
        ("inferenceservice.yaml", "spec.predictor.replicas", 1, "replicas"),
        ("inferenceservice.yaml", "spec.predictr", {}, "predictr"),
        # wrong types
        ("servingruntime.yaml", "spec.containers.0.ports.0.containerPort", "8000", "integer"),
        ("servingruntime.yaml", "spec.multiModel", "false", "boolean"),
        ("servingruntime.yaml", "spec.protocolVersions", "v2", "array"),
        ("servingruntime.yaml", "spec.supportedModelFormats.0.priority", 0, "minimum"),
        ("inferenceservice.yaml", "spec.predictor.minReplicas", "1", "integer"),
        ("inferenceservice.yaml", "spec.predictor.model.modelFormat", "onnx", "object"),
        # int-or-string: neither
        ("inferenceservice.yaml", "spec.predictor.model.resources.limits.cpu", [2], "cpu"),
        ("servingruntime.yaml", "spec.containers.0.readinessProbe.httpGet.port", 8.5, "port"),
        # required
        ("inferenceservice.yaml", "spec.predictor.model.modelFormat", {"version": "1"}, "name"),
    ],
)
def test_a_broken_copy_of_the_manifest_fails_the_schema(
    name: str, path: str, value: Any, says: str
) -> None:
    plural = MANIFESTS[name]
    errors = schema_errors(plural, _set(load(name), path, value))
    assert errors, f"{name} with {path}={value!r} passed"
    assert any(says in e for e in errors), errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.predictor.model.resources.limits.cpu", 2),  # int-or-string: either
        ("spec.predictor.model.resources.limits.cpu", "1500m"),
        ("spec.predictor.model.args", ["--flag"]),  # a known field not in the example
        ("spec.predictor.model.env", [{"name": "ORTSERVE_LOG_LEVEL", "value": "debug"}]),
    ],
)
def test_valid_variations_of_the_manifest_pass_the_schema(path: str, value: Any) -> None:
    assert schema_errors("inferenceservices", _set(service(), path, value)) == []


def test_serving_runtime_speaks_v2_over_rest_and_grpc() -> None:
    spec = runtime()["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"} <= PROTOCOLS
    assert "onnx" in {f["name"] for f in spec["supportedModelFormats"]}


def test_the_metadata_is_kubernetes_object_meta() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name in MANIFESTS:
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": load(name)["metadata"]}
        kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)


def test_serving_runtime_container_passes_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ortserve"},
        "spec": {"containers": runtime()["spec"]["containers"]},
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_serving_runtime_serves_the_storage_initializers_folder_on_both_ports() -> None:
    (container,) = runtime()["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    assert env["ORTSERVE_MODEL_REPOSITORY"] == "/mnt/models"
    settings = Settings(port=int(env["ORTSERVE_PORT"]), grpc_port=int(env["ORTSERVE_GRPC_PORT"]))
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == [settings.port, settings.grpc_port]  # REST first: Knative routes to it
    assert container["livenessProbe"]["grpc"]["port"] == settings.grpc_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_inference_service_uses_the_runtime() -> None:
    model = service()["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime()["metadata"]["name"]
    formats = {f["name"] for f in runtime()["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime()["spec"]["protocolVersions"]
