"""``make bench CHECK=1``: the targets table of docs/benchmarks.md against synthetic reports in
the shape ``benchmarks.run`` writes (pure logic; no timing is measured or asserted here)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.targets import (
    DOC,
    check,
    load_targets,
    measure,
    parse_targets,
    run_check,
    verdict,
)

ROOT = Path(__file__).resolve().parents[2]


def _scenario(
    rps: list[float],
    *,
    limit: float = 1.0,
    naive: float = 1.5,
    decode: float = 1.0,
    p50_c1_ms: float = 5.0,
    single_item_ms: float = 4.0,
) -> dict[str, Any]:
    """One scenario's entry at concurrency 1 and 32 (per-round served rps ``rps`` at c=32)."""
    ratio = {
        "served_over_limit": {"median": limit, "rounds": [limit] * 3},
        "served_over_limit_with_preparation": {"median": decode, "rounds": [decode] * 3},
        "served_over_naive": {"median": naive, "rounds": [naive] * 3},
    }
    return {
        "model": "m",
        "limit": {"single_item_ms": single_item_ms, "items_per_s": 300.0},
        "served": [
            {"p50_ms": p50_c1_ms, "mean_batch_size": 1.0, "runs_rps": [r / 2 for r in rps]},
            {"p50_ms": 100.0, "mean_batch_size": 20.0, "runs_rps": rps},
        ],
        "naive": [{}, {}],
        "ratios": [{"concurrency": 1, **ratio}, {"concurrency": 32, **ratio}],
    }


def meeting_every_target() -> dict[str, Any]:
    return {
        "scenarios": {
            "classify": _scenario([150, 160, 155], decode=0.95, naive=1.4),
            "classify-int8": _scenario([300, 330, 320]),
            "detect": _scenario([90, 92, 94]),
            "detect-int8": _scenario([180, 190, 185]),
            "embed": _scenario([300, 310, 290], limit=1.0, naive=1.3, p50_c1_ms=6.0),
            "embed-same": _scenario([300, 300, 300], limit=0.9),
            "embed-int8": _scenario([600, 600, 600]),
        },
        "pipeline": {"server_over_client": {"median": 1.6, "rounds": [1.6, 1.5, 1.7]}},
        "memory": {"rss_loaded_mb": 800.0, "rss_after_load_mb": 1050.0, "growth_pct": 0.01},
        "overhead": {
            "ratios": {
                "live": {"triton": 0.3},
                "glove": {"triton": 0.6, "mosec": 1.1},
                "mobilenet": {"triton": 1.05},
            },
            "cores": {"glove": {"ortserve": 1.7}},
        },
    }


def test_the_docs_table_parses_and_names_each_target_once() -> None:
    targets = load_targets()
    assert len(targets) >= 10
    assert len({t.name for t in targets}) == len(targets)
    assert len({t.metric for t in targets}) == len(targets)
    metrics = {t.metric: (t.op, t.bound) for t in targets}
    # the promises of issues 5, 18 and 19, as docs/benchmarks.md states them
    assert metrics["classify@32:served/limit-with-decode"] == (">=", 0.9)
    assert metrics["classify@32:served/naive"] == (">=", 1.3)
    assert metrics["embed@32:served/limit"] == (">=", 0.9)
    assert metrics["embed-int8@32:served/embed"] == (">=", 1.4)
    assert metrics["pipeline:server/client"] == (">=", 1.5)
    assert metrics["memory:growth-pct"] == ("<=", 5.0)


def test_every_metric_of_the_table_is_one_the_check_can_measure() -> None:
    report = meeting_every_target()
    for target in load_targets():
        assert isinstance(measure(target.metric, report), float), target.metric


def test_a_report_meeting_every_target_passes(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = check(meeting_every_target(), load_targets())
    assert all(o.value is not None and not o.missed for o in outcomes)
    passed, message = verdict(outcomes)
    assert passed, message
    assert run_check(meeting_every_target()) == 0
    assert "check passed" in capsys.readouterr().out


def test_the_metrics_are_read_from_the_right_places() -> None:
    report = meeting_every_target()
    assert measure("classify@32:served/limit-with-decode", report) == 0.95
    assert measure("embed@1:p50-ms-over-single-item", report) == pytest.approx(2.0)
    assert measure("embed@32:mean-batch", report) == 20.0
    # per-round throughput ratios, then their median: 600/300, 600/310, 600/290
    assert measure("embed-int8@32:served/embed", report) == pytest.approx(2.0)
    assert measure("memory:rss-after-load-mb", report) == 1050.0


@pytest.mark.parametrize(
    ("path", "value", "missed_name"),
    [
        (("scenarios", "classify", "ratios", 1, "served_over_naive", "median"), 1.03, "naive"),
        (("scenarios", "embed", "served", 0, "p50_ms"), 7.5, "single-item"),
        (("memory", "growth_pct"), 6.0, "RSS growth"),
        (("pipeline", "server_over_client", "median"), 1.12, "pipeline"),
    ],
)
def test_a_report_missing_one_target_fails_naming_it(
    path: tuple[Any, ...], value: float, missed_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = meeting_every_target()
    node: Any = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    outcomes = check(report, load_targets())
    missed = [o for o in outcomes if o.missed]
    assert len(missed) == 1
    passed, message = verdict(outcomes)
    assert not passed
    assert missed_name in missed[0].target.name
    assert missed[0].target.name in message
    assert run_check(report) == 1
    out = capsys.readouterr().out
    assert "check FAILED" in out and missed[0].target.name in out and "MISSED" in out


def test_int8_slower_than_its_target_fails() -> None:
    report = meeting_every_target()
    report["scenarios"]["embed-int8"]["served"][1]["runs_rps"] = [400, 420, 380]  # 1.33×
    missed = [o.target.metric for o in check(report, load_targets()) if o.missed]
    assert missed == ["embed-int8@32:served/embed"]


def test_scenarios_not_run_are_not_measured_and_not_missed() -> None:
    full = meeting_every_target()
    partial = {"scenarios": {"embed": full["scenarios"]["embed"]}}
    outcomes = check(partial, load_targets())
    measured = {o.target.metric for o in outcomes if o.value is not None}
    assert measured == {t.metric for t in load_targets() if t.metric.startswith("embed@")}
    assert verdict(outcomes)[0]
    skipped = next(o for o in outcomes if o.target.metric.startswith("classify@32"))
    assert skipped.value is None and "classify" in skipped.why


def test_a_report_with_nothing_measurable_fails() -> None:
    passed, message = verdict(check({"scenarios": {}}, load_targets()))
    assert not passed
    assert "no target" in message


def test_an_unreadable_row_or_a_missing_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no '## Targets'"):
        parse_targets("# Benchmarks\n")
    bad = "## Targets\n\n| target | metric | bound | source |\n| --- | --- | --- | --- |\n"
    with pytest.raises(ValueError, match="fast enough"):
        parse_targets(bad + "| fast enough | `embed@32:served/limit` | about 1 | me |\n")
    with pytest.raises(ValueError, match="unknown metric"):
        measure("embed@32:served-ish", meeting_every_target())
    assert DOC.is_file()


def test_the_cli_checks_a_saved_report_without_running(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(meeting_every_target()))
    report = copy.deepcopy(meeting_every_target())
    report["scenarios"]["embed"]["ratios"][1]["served_over_limit"]["median"] = 0.71
    bad.write_text(json.dumps(report))

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "benchmarks.run", "--check", str(path)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    ok = run(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = run(bad)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "`/embed` c=32 served over the limit" in failed.stdout
    assert "0.710" in failed.stdout


# -- the serving-overhead run (benchmarks.overhead) ---------------------------------------------
OVERHEAD_OUTPUT = """\
scenario     ortserve     triton      mosec ortserve/triton ortserve/mosec
live            37274     132886          -          0.278              -
glove            6120      18799      10219          0.326          0.601
mobilenet         190        212          -          0.895              -
(requests/s, medians of 3 alternated rounds of 8s at c=32; ratios taken inside each round)

scenario   server      cores-used server CPU ms/req
live       ortserve          0.97            0.026
live       triton            1.20            0.009
glove      ortserve          1.81            0.296
glove      triton            1.75            0.093
glove      mosec             1.44            0.133
mobilenet  ortserve          1.90           10.000
mobilenet  triton            1.95            9.200
"""


def test_the_serving_overhead_tables_are_read_into_the_report() -> None:
    from benchmarks import overhead

    parsed = overhead.parse(OVERHEAD_OUTPUT)
    assert parsed["ratios"]["glove"] == {"triton": 0.326, "mosec": 0.601}
    assert parsed["ratios"]["live"] == {"triton": 0.278}
    assert parsed["requests_per_s"]["glove"]["mosec"] == 10219
    assert parsed["cores"]["glove"] == {"ortserve": 1.81, "triton": 1.75, "mosec": 1.44}
    assert parsed["cpu_ms_per_request"]["mobilenet"]["ortserve"] == 10.0
    with pytest.raises(ValueError, match="not the output"):
        overhead.parse("wrk: connection refused\n")


def test_the_overhead_targets_are_measured_from_the_run_and_missed_by_name() -> None:
    from benchmarks import overhead

    report: dict[str, Any] = {"overhead": overhead.parse(OVERHEAD_OUTPUT)}
    assert measure("overhead:glove/mosec", report) == 0.601
    assert measure("overhead:glove-cores", report) == 1.81
    outcomes = {o.target.metric: o for o in check(report, load_targets())}
    assert outcomes["overhead:glove/mosec"].missed  # 0.601 < 1.0
    assert not outcomes["overhead:glove-cores"].missed  # 1.81 ≥ 1.5
    assert not outcomes["overhead:live/triton"].missed  # 0.278 ≥ 0.25
    # a run without it: those targets are not measured (not missed)
    without = [o for o in check({}, load_targets()) if o.target.metric.startswith("overhead:")]
    assert without and all(o.value is None and not o.missed for o in without)
