"""``make bench CHECK=1``: a benchmark report against the targets table of docs/benchmarks.md.

The table under ``## Targets`` in docs/benchmarks.md is the one list of promised numbers; this
module parses it (so the docs and the check cannot drift) and measures each row's ``metric`` in a
``benchmarks.run`` report. A metric is one of

- ``<scenario>@<c>:served/limit``, ``…:served/limit-with-decode``, ``…:served/naive``: the median
  of the per-round ratios the report holds at concurrency ``c``;
- ``<scenario>@<c>:served/<other scenario>``: the median of per-round served throughput ratios
  of two scenarios (e.g. int8 against fp32);
- ``<scenario>@<c>:p50-ms-over-single-item``: the served p50 latency minus the model's
  single-item latency in-process; ``<scenario>@<c>:mean-batch``: the served mean batch size;
- ``pipeline:server/client``: the pipeline scenario's median per-round ratio;
- ``memory:rss-loaded-mb``, ``memory:rss-after-load-mb``, ``memory:growth-pct``;
- ``overhead:<scenario>/<peer>`` (ortserve over Triton or mosec) and ``overhead:<scenario>-cores``
  from the serving-overhead run (``benchmarks.overhead``, ``make bench OVERHEAD=…``).

A target whose scenario or concurrency is not in the report is *not measured* (``--only``), which
is not a miss; a report in which no target could be measured at all fails the check.

    python -m benchmarks.run --check                      # run, then check
    python -m benchmarks.run --check results/bench-….json  # check a saved report
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import overhead

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADING = "## Targets"
RATIOS = {
    "served/limit": "served_over_limit",
    "served/limit-with-decode": "served_over_limit_with_preparation",
    "served/naive": "served_over_naive",
}
_SCENARIO = re.compile(r"^(?P<scenario>[\w-]+)@(?P<c>\d+):(?P<quantity>[\w/-]+)$")


class NotMeasured(Exception):
    """The report has no value for the metric (its scenario or concurrency was not run)."""


@dataclass(frozen=True)
class Target:
    name: str
    metric: str
    op: str  # ">=" or "<="
    bound: float
    source: str

    def met_by(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


@dataclass(frozen=True)
class Outcome:
    target: Target
    value: float | None  # None: not measured
    why: str = ""

    @property
    def missed(self) -> bool:
        return self.value is not None and not self.target.met_by(self.value)


def parse_targets(markdown: str) -> list[Target]:
    """The rows of the table under ``## Targets``: ``| target | `metric` | ≥ 0.9 | source |``."""
    lines = markdown.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        raise ValueError(f"no {HEADING!r} section") from None
    targets: list[Target] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] == "target" or set(cells[0]) <= {"-", " "}:
            continue
        name, metric, bound, source = cells
        found = re.fullmatch(r"(≥|≤|>=|<=)\s*([-+]?\d+(?:\.\d+)?)", bound)
        if not found or not (metric.startswith("`") and metric.endswith("`")):
            raise ValueError(f"target {name!r}: cannot read metric {metric!r} / bound {bound!r}")
        op = ">=" if found.group(1) in ("≥", ">=") else "<="
        targets.append(Target(name, metric.strip("`"), op, float(found.group(2)), source))
    if not targets:
        raise ValueError(f"the {HEADING!r} section has no table rows")
    return targets


def load_targets(doc: Path = DOC) -> list[Target]:
    return parse_targets(doc.read_text())


def _at(entry: dict[str, Any], c: int) -> int:
    for i, ratio in enumerate(entry["ratios"]):
        if ratio["concurrency"] == c:
            return i
    raise NotMeasured(f"concurrency {c} not in this run")


def measure(metric: str, report: dict[str, Any]) -> float:
    """The metric's value in ``report`` (see the module docstring); raises NotMeasured."""
    if metric == "pipeline:server/client":
        if "pipeline" not in report:
            raise NotMeasured("no pipeline scenario in this run")
        return float(report["pipeline"]["server_over_client"]["median"])
    if metric.startswith("overhead:"):
        if "overhead" not in report:
            raise NotMeasured("no serving-overhead run (make bench OVERHEAD=…/serving-overhead.sh)")
        return overhead.measure(metric, report["overhead"])
    if metric.startswith("memory:"):
        memory = report.get("memory")
        if not memory:
            raise NotMeasured("no memory check in this run")
        key = {
            "memory:rss-loaded-mb": "rss_loaded_mb",
            "memory:rss-after-load-mb": "rss_after_load_mb",
            "memory:growth-pct": "growth_pct",
        }.get(metric)
        if key is None:
            raise ValueError(f"unknown metric {metric!r}")
        return float(memory[key])
    found = _SCENARIO.match(metric)
    if not found:
        raise ValueError(f"unknown metric {metric!r}")
    name, c, quantity = found["scenario"], int(found["c"]), found["quantity"]
    scenarios = report.get("scenarios", {})
    if name not in scenarios:
        raise NotMeasured(f"no scenario {name!r} in this run")
    entry = scenarios[name]
    i = _at(entry, c)
    if quantity in RATIOS:
        return float(entry["ratios"][i][RATIOS[quantity]]["median"])
    if quantity == "p50-ms-over-single-item":
        return float(entry["served"][i]["p50_ms"]) - float(entry["limit"]["single_item_ms"])
    if quantity == "mean-batch":
        return float(entry["served"][i]["mean_batch_size"])
    if quantity.startswith("served/"):
        other = quantity.removeprefix("served/")
        if other not in scenarios:
            raise NotMeasured(f"no scenario {other!r} in this run")
        a = entry["served"][i]["runs_rps"]
        b = scenarios[other]["served"][_at(scenarios[other], c)]["runs_rps"]
        return float(np.median([x / y for x, y in zip(a, b, strict=True)]))
    raise ValueError(f"unknown metric {metric!r}")


def check(report: dict[str, Any], targets: list[Target]) -> list[Outcome]:
    outcomes = []
    for target in targets:
        try:
            outcomes.append(Outcome(target, measure(target.metric, report)))
        except NotMeasured as exc:
            outcomes.append(Outcome(target, None, str(exc)))
    return outcomes


def render(outcomes: list[Outcome]) -> str:
    lines = ["| target | metric | bound | measured | |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        t = o.target
        bound = f"{'≥' if t.op == '>=' else '≤'} {t.bound:g}"
        if o.value is None:
            lines.append(f"| {t.name} | `{t.metric}` | {bound} | | not measured: {o.why} |")
        else:
            verdict = "MISSED" if o.missed else "met"
            lines.append(f"| {t.name} | `{t.metric}` | {bound} | {o.value:.3f} | {verdict} |")
    return "\n".join(lines)


def verdict(outcomes: list[Outcome]) -> tuple[bool, str]:
    """(passed, message): fails naming every missed target, or when nothing was measured."""
    missed = [o for o in outcomes if o.missed]
    if missed:
        names = "; ".join(
            f"{o.target.name} ({o.target.metric} = {o.value:.3f}, needs "
            f"{'≥' if o.target.op == '>=' else '≤'} {o.target.bound:g})"
            for o in missed
        )
        return False, f"{len(missed)} target(s) missed: {names}"
    if all(o.value is None for o in outcomes):
        return False, "no target could be measured in this report"
    measured = sum(o.value is not None for o in outcomes)
    return True, f"all {measured} measured targets met ({len(outcomes) - measured} not measured)"


def run_check(report: dict[str, Any], doc: Path = DOC) -> int:
    """Print the table and the verdict; the process exit status (0 met, 1 missed)."""
    outcomes = check(report, load_targets(doc))
    passed, message = verdict(outcomes)
    print(render(outcomes))
    print(("check passed: " if passed else "check FAILED: ") + message)
    return 0 if passed else 1


def load_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report
