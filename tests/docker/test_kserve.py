"""deploy/kserve: the ServingRuntime and the InferenceService example, checked statically.

The containers are validated strictly against Kubernetes' own schema (as a Pod, with
kubernetes-validate); the KServe wrappers against the fields of KServe's API types
(serving.kserve.io v1alpha1 ServingRuntimeSpec, v1beta1 InferenceService's predictor), listed
here; and the files against the code: real settings, the repository where KServe's storage
initializer puts the model, the ports the server opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
SETTINGS = {f"ORTSERVE_{name.upper()}" for name in Settings.model_fields}
# KServe's API (pkg/apis/serving): the fields each object may carry
SERVING_RUNTIME_SPEC = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "imagePullSecrets",
    "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper",
    "builtInAdapter", "containers", "volumes", "nodeSelector", "affinity", "tolerations",
    "labels", "annotations", "hostIPC", "workerSpec",
}  # fmt: skip
MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
PREDICTOR = {
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "labels", "annotations",
    "deploymentStrategy", "autoScaling", "containers", "volumes", "nodeSelector",
    "serviceAccountName", "tolerations", "affinity", "imagePullSecrets", "resources",
}  # fmt: skip
MODEL = {
    "modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "resources", "env",
    "args", "ports", "image", "name", "command", "volumeMounts", "readinessProbe",
    "livenessProbe", "startupProbe", "securityContext",
}  # fmt: skip


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KSERVE / name).read_text())
    return document


def runtime() -> dict[str, Any]:
    return load("servingruntime.yaml")


def service() -> dict[str, Any]:
    return load("inferenceservice.yaml")


def test_serving_runtime_has_only_kserve_fields() -> None:
    doc = runtime()
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    spec = doc["spec"]
    assert set(spec) <= SERVING_RUNTIME_SPEC, set(spec) - SERVING_RUNTIME_SPEC
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"} <= PROTOCOLS
    for model_format in spec["supportedModelFormats"]:
        assert set(model_format) <= MODEL_FORMAT
    assert "onnx" in {f["name"] for f in spec["supportedModelFormats"]}


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
    doc = service()
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = doc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR, set(predictor) - PREDICTOR
    model = predictor["model"]
    assert set(model) <= MODEL, set(model) - MODEL
    assert model["runtime"] == runtime()["metadata"]["name"]
    formats = {f["name"] for f in runtime()["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime()["spec"]["protocolVersions"]
