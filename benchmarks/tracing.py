"""What tracing costs: the ``make bench`` scenarios with tracing off, and on at sampling ratios,
in alternated rounds, reported as per-round throughput ratios (traced / off).

    python -m benchmarks.tracing --models models --only embed [--ratios 1.0,0.01]
        [--rounds 3] [--concurrency 32] [--duration-s 8]        # make bench-tracing

Each round starts one server per setting, one at a time (they never share the CPU), loads each
chosen scenario for ``--duration-s`` after a one-second warm-up, and stops it. "Traced" is the
server configured only by OTEL_* (``parentbased_traceidratio`` at the ratio) exporting OTLP/HTTP
to a receiver in this process that decodes every export (``devtools.otlp``), so the server pays
for serialising and sending what a real collector would receive. Only the scenarios' models
are loaded (explicit model control), so a round starts in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import load, ortserve_server
from benchmarks.scenarios import Scenario, scenarios
from devtools.otlp import Receiver, otlp_receiver
from devtools.server import REPO_ROOT


def traced_env(receiver: Receiver, ratio: float | None, models: list[str]) -> dict[str, str]:
    env = {"ORTSERVE_MODEL_CONTROL": "explicit", "ORTSERVE_STARTUP_MODELS": ",".join(models)}
    if ratio is not None:
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(ratio),
        }
    return env


def one_round(
    models: Path, chosen: list[Scenario], settings: list[float | None], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """{setting: {scenario: {rps, p50_ms, p99_ms, spans}}} for one round."""
    out: dict[str, dict[str, Any]] = {}
    names = sorted({s.model for s in chosen})
    for ratio in settings:
        label = "off" if ratio is None else f"ratio {ratio:g}"
        with otlp_receiver(keep=False) as receiver:
            with ortserve_server(models, traced_env(receiver, ratio, names)) as (url, _):
                out[label] = {}
                for s in chosen:
                    load(url + s.path, s.bodies, args.concurrency, 1.0)  # warm
                    result = load(url + s.path, s.bodies, args.concurrency, args.duration_s)
                    out[label][s.name] = {
                        "rps": result["throughput_rps"],
                        "p50_ms": result.get("p50_ms"),
                        "p99_ms": result.get("p99_ms"),
                    }
            out[label]["otlp_exports"] = receiver.requests  # the server flushed as it stopped
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--only", default="embed", help="comma-separated scenario names")
    parser.add_argument("--ratios", default="1.0,0.01", help="sampling ratios to compare to off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=8.0)
    args = parser.parse_args()
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        sys.exit("the otel extra is not installed: pip install -e '.[otel]'")
    models = args.models.resolve()
    names = args.only.split(",")
    chosen = [s for s in scenarios(models) if s.name in names]
    if not chosen:
        sys.exit(f"no scenario among {names} has its model in {models}")
    ratios = [float(r) for r in args.ratios.split(",") if r]
    settings: list[float | None] = [None, *ratios]
    rows: dict[str, dict[str, list[float]]] = {}
    for i in range(args.rounds):
        # alternate the order, so that the host's drift does not always favour one setting
        order = settings if i % 2 == 0 else list(reversed(settings))
        measured = one_round(models, chosen, order, args)
        print(json.dumps({"round": i + 1, **measured}), flush=True)
        for label, by_scenario in measured.items():
            if label == "off":
                continue
            for name, result in by_scenario.items():
                if name == "otlp_exports":
                    continue
                ratio = result["rps"] / measured["off"][name]["rps"]
                rows.setdefault(label, {}).setdefault(name, []).append(ratio)
    summary = {
        label: {
            name: {"ratios": [round(r, 3) for r in rs], "median": round(statistics.median(rs), 3)}
            for name, rs in by_scenario.items()
        }
        for label, by_scenario in rows.items()
    }
    print(json.dumps({"throughput traced / off": summary}, indent=2))


if __name__ == "__main__":
    main()
