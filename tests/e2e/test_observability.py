"""The shipped dashboard, autoscaling rules and alerts against a real Prometheus scraping a real
server under load: every PromQL expression they use returns data (no misspelt metric or label),
every alert goes pending under the condition it describes, and the latency histogram's exemplars
carry trace ids.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` installs it); the test skips, saying
so, where the binary is absent. It runs on a loopback port with its own config and a temporary
data folder, scraping every second.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devtools.otlp import otlp_receiver
from tests.api.conftest import b64, png, solid
from tests.reliability.models import faulty_classifier, slow_classifier
from tests.support.server import REPO_ROOT, Server, free_port, running_server
from tests.support.tiny_models import TINY_DEFAULTS

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "ortserve.json"
K8S = REPO_ROOT / "deploy" / "k8s"
# the labels a Kubernetes pod scrape job adds, which the adapter rules and KEDA queries select on
POD_LABELS = {"namespace": "default", "pod": "ortserve-0", "app_kubernetes_io_component": "api"}
DEADLINE_S = 0.15  # ORTSERVE_REQUEST_TIMEOUT_S: the slow model's runs take longer
LOAD_S = 8.0
RED = b64(png(solid((255, 0, 0))))
BLUE = b64(png(solid((0, 0, 255))))

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"
)


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
def test_the_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the expressions --------------------------------------------------------------------------
def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, Grafana's variables filled in as "All"."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
            found.append((panel["title"], expr.replace("$model", ".*")))
    return found


def adapter_rules() -> list[dict[str, Any]]:
    (config,) = [
        doc
        for doc in yaml.safe_load_all((K8S / "prometheus-adapter-rules.yaml").read_text())
        if doc["kind"] == "ConfigMap"
    ]
    rules: list[dict[str, Any]] = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return rules


def adapter_query(rule: dict[str, Any]) -> str:
    """The query prometheus-adapter sends for the HPA: its template filled as it fills it."""
    series = rule["seriesQuery"].split("{")[0]
    matchers = 'namespace="default",pod=~"ortserve-0|ortserve-1"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def keda_queries() -> list[str]:
    docs = yaml.safe_load_all((K8S / "keda.yaml").read_text())
    return [
        trigger["metadata"]["query"]
        for doc in docs
        if doc and doc["kind"] == "ScaledObject"
        for trigger in doc["spec"]["triggers"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# -- the parts --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repository(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models, plus: ``slow`` (a run ≈ 4 deadlines, a queue of 2: 429s, 504s
    and an old queue), ``faulty`` (500 on red pictures), ``broken`` (never loads: not ready)."""
    root = tmp_path_factory.mktemp("observed-models")
    for folder in tiny_repo.iterdir():
        shutil.copytree(folder, root / folder.name)
    slow_classifier(root / "slow", work=160, max_batch_size=1, max_queue_size=2)
    faulty_classifier(root / "faulty")
    shutil.copytree(root / "tiny-classifier", root / "broken")
    (root / "broken" / "model.onnx").write_bytes(b"not an onnx graph")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Server]:
    with (
        otlp_receiver(keep=False) as sink,  # tracing on, so that the histograms have exemplars
        running_server(
            repository,
            strict_startup="false",
            request_timeout_s=str(DEADLINE_S),
            intra_op_threads="1",
            extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url},
            **TINY_DEFAULTS,
        ) as running,
    ):
        yield running


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "ortserve",
                "static_configs": [
                    {"targets": [server.url.removeprefix("http://")], "labels": POD_LABELS}
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def load(server: Server, seconds: float) -> dict[int, int]:
    """Every kind of traffic the rules describe at once: good requests on several endpoints,
    an unknown model (404), a failing model (500), and a flood of the slow one (429, 504)."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    kinds = [
        ("/classify", {"images": [BLUE]}),
        ("/embed", {"inputs": ["a few words"]}),
        ("/detect", {"images": [RED]}),
        ("/classify", {"model": "no-such-model", "images": [BLUE]}),
        ("/classify", {"model": "faulty", "images": [RED]}),
        *[("/classify", {"model": "slow", "images": [BLUE]})] * 6,
    ]

    def client(path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while time.monotonic() < stop:
                status = http.post(path, json=body).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                time.sleep(0.02 if status in (429, 504) else 0.005)

    threads = [threading.Thread(target=client, args=kind) for kind in kinds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.fixture(scope="module")
def observed(server: Server, prometheus: Prometheus) -> set[str]:
    """Load the server for LOAD_S while watching Prometheus's alerts; the alerts seen pending or
    firing. Then wait for two more scrapes, so every series has its last values."""
    seen: set[str] = set()
    statuses: dict[int, int] = {}
    loader = threading.Thread(target=lambda: statuses.update(load(server, LOAD_S)))
    loader.start()
    while loader.is_alive():
        for alert in prometheus.get("/api/v1/alerts")["alerts"]:
            if alert["state"] in ("pending", "firing"):
                seen.add(alert["labels"]["alertname"])
        time.sleep(0.25)
    assert {200, 404, 429, 500, 504} <= set(statuses), statuses
    time.sleep(2.5)
    return seen


# -- the checks -------------------------------------------------------------------------------
@needs_prometheus
@pytest.mark.parametrize(("title", "expr"), dashboard_queries())
def test_each_dashboard_query_returns_data(
    prometheus: Prometheus, observed: set[str], title: str, expr: str
) -> None:
    assert prometheus.query(expr), f"{title!r}: no data for {expr}"


@needs_prometheus
def test_the_dashboard_variables_find_jobs_and_models(
    prometheus: Prometheus, observed: set[str]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector = match[1].replace('{job=~"$job"}', "")
        values = prometheus.get(f"/api/v1/label/{match[2]}/values", **{"match[]": selector})
        assert values, variable["name"]
        if variable["name"] == "model":
            assert {"tiny-classifier", "slow", "broken"} <= set(values)


@needs_prometheus
@pytest.mark.parametrize("rule", adapter_rules(), ids=lambda rule: rule["name"]["as"])
def test_each_adapter_rule_finds_its_series_and_answers_per_pod(
    prometheus: Prometheus, observed: set[str], rule: dict[str, Any]
) -> None:
    assert prometheus.get("/api/v1/series", **{"match[]": rule["seriesQuery"]})
    result = prometheus.query(adapter_query(rule))
    assert [r["metric"] for r in result] == [{"pod": "ortserve-0"}], result


@needs_prometheus
def test_the_keda_queries_return_data(prometheus: Prometheus, observed: set[str]) -> None:
    cpu, gpu = keda_queries()
    assert prometheus.query(cpu), cpu
    # the test's pod is a CPU one: the GPU query differs only in the component it selects
    assert prometheus.query(gpu.replace('"api-gpu"', '"api"')), gpu


@needs_prometheus
@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_goes_pending_under_its_condition(
    observed: set[str], rule: dict[str, Any]
) -> None:
    assert rule["alert"] in observed, f"{rule['alert']} never pending; seen: {sorted(observed)}"


@needs_prometheus
def test_the_latency_histogram_has_trace_exemplars(
    prometheus: Prometheus, observed: set[str]
) -> None:
    now = time.time()
    data = prometheus.get(
        "/api/v1/query_exemplars",
        query="ortserve_request_duration_seconds_bucket",
        start=now - 120,
        end=now,
    )
    trace_ids = {e["labels"].get("trace_id", "") for series in data for e in series["exemplars"]}
    assert any(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), data
