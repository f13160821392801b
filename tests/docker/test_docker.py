"""The real images and Compose setups: build, start, call every endpoint, tear down.

Marked ``docker``; each test skips with its reason when no Docker engine answers (``docker info``)
or the default models are not built (``make models``: the CPU image copies ./models in).

One Compose project per test run (unique name, image tags and ephemeral host ports), so a run
neither collides with another nor touches ``ortserve:cpu`` or a running ``docker compose up``.
``ORTSERVE_DOCKER_TEST_MODELS=/path`` runs the scale-out tests against that model repository
(mounted with deploy/compose.models.yml) instead of the default models in the image.

A task without any model in ./models (the shapes demo models are trained by ``make models`` and
may not be built yet) must answer 404 ``model_not_found``; the run says so with a warning.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image, ImageDraw

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("classify", "detect", "segment", "embed")
REPLICAS = 2
# The README's figure: 502 MB above python:3.11-slim with the default models; 5 % over it fails.
README_MB_ABOVE_BASE = 502
MAX_MB_ABOVE_BASE = README_MB_ABOVE_BASE * 1.05

pytestmark = pytest.mark.docker


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI here"
    try:
        info = run("docker", "info", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"no Docker engine here (docker info fails: {info.stderr.strip()[:200]})"
    if run("docker", "compose", "version", check=False).returncode != 0:
        return "no Docker Compose v2 (docker compose version fails)"
    return None


ENGINE_PROBLEM = engine_problem()


def require_engine() -> None:
    if ENGINE_PROBLEM:
        pytest.skip(ENGINE_PROBLEM)


def require_image_models() -> None:
    """The image build copies ./models: it needs at least the default classifier there."""
    if not (ROOT / "models" / "mobilenet_v2" / "model.onnx").is_file():
        pytest.skip(
            "default models not built (models/mobilenet_v2/model.onnx is missing): make models"
        )


def default_model(task: str) -> str:
    """The service's built-in default (the containers do not see this process's environment)."""
    return str(Settings.model_fields[f"default_{task}_model"].default)


def models_by_task(repository: Path) -> dict[str, str]:
    """One model per task: the service's default where the repository has it, else the first."""
    found: dict[str, list[str]] = {}
    for config in sorted(repository.glob("*/config.yaml")):
        if (config.parent / "model.onnx").is_file():
            task = yaml.safe_load(config.read_text())["task"]
            found.setdefault(task, []).append(config.parent.name)
    chosen = {}
    for task in TASKS:
        names = found.get(task, [])
        default = default_model(task)
        if names:
            chosen[task] = default if default in names else names[0]
    return chosen


def png(width: int = 320, height: int = 240) -> bytes:
    img = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 40, 130, 140), fill=(210, 40, 40))
    draw.rectangle((180, 90, 280, 190), fill=(40, 60, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def call(client: httpx.Client, task: str, model: str | None) -> httpx.Response:
    """One request per task for ``model``, or for the task's default when ``model`` is None.

    The repository has no model for the task when ``model`` is None: the answer must be a typed
    404 (``model_not_found``) rather than a failure or a hang.
    """
    payload: dict[str, object] = {"model": model} if model else {}
    if task == "embed":
        payload["inputs"] = ["a red circle", "a blue square"]
    else:
        payload["images"] = [base64.b64encode(png()).decode()]
    response = client.post(f"/{task}", json=payload)
    if model is None:
        assert response.status_code == 404, f"{task}: {response.status_code} {response.text[:500]}"
        error = response.json()
        assert error["error_type"] == "model_not_found", error
        assert task in error["error"], error
        assert error["request_id"] == response.headers["x-request-id"]
        return response
    assert response.status_code == 200, f"{task}: {response.status_code} {response.text[:500]}"
    body = response.json()
    assert body["model"] == model
    if task == "embed":
        assert len(body["embeddings"]) == 2
        assert len(body["embeddings"][0]) == body["dimensions"] > 0
    else:
        (result,) = body["results"]
        expected = {"classify": "predictions", "detect": "detections"}.get(task, "kind")
        assert expected in result, f"{task}: {sorted(result)}"
    return response


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    files: list[str]
    models: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for name in self.files for arg in ("-f", name)]
        command = ["docker", "compose", *files, "-p", self.project, "--profile", "scale", *args]
        return run(*command, env=self.env, timeout=timeout, check=check)

    def url(self, service: str, port: int) -> str:
        address = self.compose("port", service, str(port)).stdout.strip()
        return f"http://{address}"

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.compose(
            "down", "--volumes", "--remove-orphans", "--rmi", "all", timeout=300, check=False
        )


def compose_env(tag: str, **extra: str) -> dict[str, str]:
    # the developer's own ORTSERVE_* settings must not leak into the containers
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    env.update(
        ORTSERVE_IMAGE=f"ortserve-test:{tag}",
        ORTSERVE_LB_IMAGE=f"ortserve-lb-test:{tag}",
        ORTSERVE_HOST_PORT="127.0.0.1:0",
        ORTSERVE_LB_HOST_PORT="127.0.0.1:0",
        ORTSERVE_REPLICAS=str(REPLICAS),
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """``docker compose --profile scale up --build --wait api lb``: one instance, 2 replicas, nginx."""
    require_engine()
    require_image_models()
    tag = uuid.uuid4().hex[:8]
    files = ["docker-compose.yml"]
    external = os.environ.get("ORTSERVE_DOCKER_TEST_MODELS")
    if external:
        files.append("deploy/compose.models.yml")
        repository = Path(external).resolve()
        env = compose_env(tag, ORTSERVE_MODELS_DIR=str(repository))
    else:
        repository = ROOT / "models"
        env = compose_env(tag)
    models = models_by_task(repository)
    if "classify" not in models or "embed" not in models:
        pytest.skip(f"no classify or embed model in {repository}: make models")
    for task in TASKS:
        if task not in models:
            warnings.warn(
                f"no {task} model in {repository} (default {default_model(task)!r} not built "
                f"yet: make models); /{task} is checked to answer 404 model_not_found",
                UserWarning,
                stacklevel=1,
            )
    stack = Stack(f"ortserve-test-{tag}", env, files, models)
    try:
        started = time.monotonic()
        up = stack.compose(
            "up",
            "--build",
            "--wait",
            "--wait-timeout",
            "900",
            "api",
            "lb",
            timeout=2400,
            check=False,
        )
        if up.returncode != 0:
            logs = stack.compose("logs", "--tail", "40", check=False).stdout
            raise AssertionError(f"compose up failed:\n{up.stderr[-4000:]}\n{logs[-6000:]}")
        print(f"\ncompose up --build --wait: {time.monotonic() - started:.0f} s")
        stack.urls = {"api": stack.url("api", 8000), "lb": stack.url("lb", 8080)}
        yield stack
    finally:
        stack.down()


def test_a_single_container_answers_every_endpoint(stack: Stack) -> None:
    with httpx.Client(base_url=stack.urls["api"], timeout=60) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        for task in TASKS:
            call(client, task, stack.models.get(task))
    # the image's ORTSERVE_LOG_FORMAT=json survives Compose: the access log is one object per line
    logs = stack.compose("logs", "--no-log-prefix", "--no-color", "api").stdout.splitlines()
    access = [json.loads(line) for line in logs if line.startswith("{") and "/classify" in line]
    assert access, f"no JSON access-log line for /classify in:\n{chr(10).join(logs[-20:])}"
    assert all(entry["request_id"] for entry in access), access


def test_the_container_labels_real_photos_right(stack: Stack) -> None:
    """Not just 200s: the image's models give the right answers (the default repository)."""
    import matplotlib
    from skimage import data

    if (stack.models.get("classify"), stack.models.get("detect")) != (
        "mobilenet_v2",
        "nanodet-coco",
    ):
        pytest.skip(f"not the default repository: {stack.models}")
    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG", quality=92)
    hopper = (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()
    with httpx.Client(base_url=stack.urls["api"], timeout=60) as client:
        classified = client.post("/classify", files=[("file", ("c.jpg", buf.getvalue()))])
        top5 = {p["label"] for p in classified.json()["results"][0]["predictions"]}
        assert top5 & {"tabby", "tiger cat", "Egyptian cat"}, top5
        detected = client.post(
            "/detect", files=[("file", ("h.jpg", hopper))], data={"confidence": "0.4"}
        )
        found = detected.json()["results"][0]["detections"]
        assert [d["label"] for d in found] == ["person", "tie"], found
        tie = found[1]["box"]  # where the tie is in that photo, ± 20 px
        for key, want in (("x1", 228), ("y1", 433), ("x2", 288), ("y2", 535)):
            assert abs(tie[key] - want) <= 20, tie


def test_the_load_balancer_spreads_every_endpoint_over_the_replicas(stack: Stack) -> None:
    upstreams: dict[str, set[str]] = {}
    with httpx.Client(base_url=stack.urls["lb"], timeout=60) as client:
        for _ in range(2 * REPLICAS):
            for task in TASKS:
                response = call(client, task, stack.models.get(task))
                upstreams.setdefault(task, set()).add(response.headers["x-upstream"])
                assert response.headers["x-request-id"]
    answered = set().union(*upstreams.values())
    assert len(answered) == REPLICAS, f"replicas that answered: {upstreams}"


def test_every_container_runs_as_a_non_root_user(stack: Stack) -> None:
    targets = [("api", "1"), ("lb", "1")] + [("replica", str(i)) for i in range(1, REPLICAS + 1)]
    for service, index in targets:
        uid = stack.compose("exec", "-T", "--index", index, service, "id", "-u").stdout.strip()
        assert uid.isdigit() and uid != "0", f"{service} #{index} runs as uid {uid!r}"


def test_the_runtime_image_has_no_torch_no_compiler_and_fits_the_size_budget(stack: Stack) -> None:
    image = stack.env["ORTSERVE_IMAGE"]
    probe = (
        "import importlib.util as u, shutil; "
        "print(u.find_spec('torch') is None, shutil.which('gcc') is None, shutil.which('cc') is None)"
    )
    result = run("docker", "run", "--rm", "--entrypoint", "python", image, "-c", probe)
    assert result.stdout.split() == ["True", "True", "True"], result.stdout
    size = int(run("docker", "image", "inspect", image, "--format", "{{.Size}}").stdout)
    base = int(
        run("docker", "image", "inspect", "python:3.11-slim", "--format", "{{.Size}}").stdout
    )
    print(
        f"\nruntime image: {size / 1e6:.0f} MB, {(size - base) / 1e6:.0f} MB above python:3.11-slim"
    )
    assert (size - base) / 1e6 <= MAX_MB_ABOVE_BASE


def test_the_load_balancer_keeps_serving_when_a_replica_stops(stack: Stack) -> None:
    container = stack.compose("ps", "-q", "replica").stdout.split()[0]
    inspect = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    stopped = run("docker", "inspect", "--format", inspect, container).stdout.strip() + ":8000"
    run("docker", "stop", "--time", "30", container, timeout=120)
    # every request succeeds (nginx retries a refused or timed-out connection on another replica)
    # and within a few probe intervals the stopped replica is out of the upstream list
    deadline = time.monotonic() + 30
    clean = 0
    with httpx.Client(base_url=stack.urls["lb"], timeout=60) as client:
        while clean < 6:
            tried = call(client, "embed", stack.models["embed"]).headers["x-upstream"]
            clean = 0 if stopped in tried else clean + 1
            assert time.monotonic() < deadline, f"still sent to the stopped replica: {tried}"
            time.sleep(0.25)


def test_compose_down_leaves_nothing_behind(stack: Stack) -> None:
    down = stack.down()
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={stack.project}"
    assert run("docker", "ps", "-aq", "--filter", label).stdout.strip() == ""
    assert run("docker", "network", "ls", "-q", "--filter", label).stdout.strip() == ""
    images = run("docker", "images", "-q", stack.env["ORTSERVE_IMAGE"]).stdout.strip()
    assert images == "", "the test's image tag is still there"


def test_an_external_model_repository_is_mounted_read_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_engine()
    require_image_models()
    from tests.support.tiny_models import TINY_DEFAULTS, build_repository

    repository = build_repository(tmp_path_factory.mktemp("external-models"))
    for path in [repository, *repository.rglob("*")]:  # readable by the image's user (uid 10001)
        path.chmod(0o755 if path.is_dir() else 0o644)
    tag = uuid.uuid4().hex[:8]
    defaults = {f"ORTSERVE_{key.upper()}": value for key, value in TINY_DEFAULTS.items()}
    env = compose_env(tag, ORTSERVE_MODELS_DIR=str(repository), **defaults)
    stack = Stack(
        f"ortserve-test-{tag}", env, ["docker-compose.yml", "deploy/compose.models.yml"], {}
    )
    try:
        stack.compose("up", "--build", "--wait", "--wait-timeout", "600", "api", timeout=1800)
        with httpx.Client(base_url=stack.url("api", 8000), timeout=60) as client:
            ready = client.get("/health/ready").json()
            assert set(ready["models"]) == {p.name for p in repository.iterdir()}, ready
            for task, name in models_by_task(repository).items():
                call(client, task, name)
            # the ORTSERVE_* settings of the caller's environment reach the container
            image = base64.b64encode(png()).decode()
            default = client.post("/classify", json={"images": [image]}).json()["model"]
            assert default == TINY_DEFAULTS["default_classify_model"]
        touch = stack.compose("exec", "-T", "api", "touch", "/models/x", check=False)
        assert touch.returncode != 0, "the model repository is writable"
        assert "Read-only file system" in touch.stderr
    finally:
        down = stack.down()
    assert down.returncode == 0, down.stderr


@pytest.mark.slow
def test_the_gpu_image_has_its_cuda_libraries_and_serves(tmp_path: Path) -> None:
    """Builds ``--target gpu`` (about 3 GB of CUDA wheels). Without a GPU the CUDA provider must
    fail only for want of the driver's libcuda, and the service still serves on the CPU; on a host
    whose Docker has the NVIDIA runtime, CUDA must activate."""
    require_engine()
    require_image_models()
    image = f"ortserve-test-gpu:{uuid.uuid4().hex[:8]}"
    build = run("docker", "build", "--target", "gpu", "-t", image, ".", timeout=3600, check=False)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    runtimes = json.loads(run("docker", "info", "--format", "{{json .Runtimes}}").stdout)
    gpu = "nvidia" in runtimes
    name = f"ortserve-test-gpu-{uuid.uuid4().hex[:8]}"
    args = ["--gpus", "all"] if gpu else ["-e", "ORTSERVE_REQUIRE_CUDA=false"]
    try:
        run(
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "127.0.0.1::8000",
            "--read-only",
            "--tmpfs",
            "/tmp",
            *args,
            image,
        )
        address = run("docker", "port", name, "8000").stdout.split()[0]
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
            while True:
                state = run(
                    "docker", "inspect", "--format", "{{.State.Status}}", name
                ).stdout.strip()
                assert state == "running", run("docker", "logs", name, check=False).stderr[-4000:]
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the GPU image did not become ready"
                time.sleep(2)
            for task, model in models_by_task(ROOT / "models").items():
                call(client, task, model)
        logs = run("docker", "logs", name).stdout + run("docker", "logs", name).stderr
        if gpu:
            assert "on CUDAExecutionProvider" in logs, logs[-4000:]
            assert "running on CPU" not in logs, logs[-4000:]
        else:
            failures = [line for line in logs.splitlines() if "Failed to load library" in line]
            assert failures, "the CUDA provider was not even tried"
            assert all("libcuda.so.1" in line for line in failures), failures[0]
    finally:
        run("docker", "rm", "-f", name, check=False)
        run("docker", "rmi", image, check=False)
