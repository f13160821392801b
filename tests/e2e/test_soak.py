"""The correctness soak (``scripts/soak.py``) on the tiny models, so its checker runs in the suite:
a short soak passes with every answer checked, and the same soak with references shifted just
past the tolerances fails, naming the mismatches. ``compare`` itself is checked on answers off
by a little more and a little less than each tolerance."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "scripts" / "soak.py"
sys.path.insert(0, str(ROOT / "scripts"))

import soak_check  # noqa: E402 - from scripts/, on the path above


def run_soak(*extra: str, seconds: int = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SOAK),
            f"--duration-s={seconds}",
            "--warmup-s=3",
            "--processes=2",
            "--concurrency=4",
            "--reload-every-s=3",
            "--settle-s=3",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def count(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the report:\n{text[-4000:]}"
    return int(found.group(1))


def test_a_short_soak_on_the_tiny_models_checks_every_answer_and_passes() -> None:
    result = run_soak()
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    assert count(r"answers checked against the references: (\d+)", report) > 200
    assert count(r"mismatches: (\d+)", report) == 0
    assert "5xx: 0 seen by clients, 0 counted by the server" in report
    for kind in ("classify", "detect", "segment", "pipeline", "versioned", "/embed", "/v2/infer"):
        assert re.search(rf"[ (]{re.escape(kind)} [1-9]\d*", report), f"{kind} never checked"
    # the versioned model flipped under traffic and both versions' answers were checked
    assert re.search(r"answers by version: \{'v1': [1-9]\d*, 'v2': [1-9]\d*\}", report), report
    assert count(r"reloads: (\d+)", report) >= 3


def test_the_soak_fails_when_the_answers_differ_from_the_references() -> None:
    result = run_soak("--tamper-references", seconds=6)
    report = result.stdout + result.stderr
    assert result.returncode == 1, report[-6000:]
    assert count(r"mismatches: (\d+)", report) > 0
    assert re.search(r"mismatch: \S+ .*score: .* != .*\(± 0\.0001\)", report), report[-4000:]
    assert re.search(r"mismatch: /embed .*cosine", report), report[-4000:]
    assert "FAIL: " in report


def test_compare_holds_each_tolerance_and_fails_just_past_it() -> None:
    box = {"x1": 10.0, "y1": 20.0, "x2": 30.0, "y2": 40.0}
    reference = {"label": "cat", "class_id": 3, "score": 0.5, "box": box}
    near = {**reference, "score": 0.50009, "box": {**box, "x1": 10.9}}
    assert soak_check.compare(reference, near) == []
    assert soak_check.compare(reference, {**reference, "score": 0.5002})
    assert soak_check.compare(reference, {**reference, "box": {**box, "x2": 31.5}})
    assert soak_check.compare(reference, {**reference, "label": "dog"})
    assert soak_check.compare([reference], [reference, reference])  # an extra detection
    assert soak_check.compare([reference], [])  # a missing one
    vector = [1.0, 2.0, 3.0]
    assert soak_check.compare_vector(vector, [2.0, 4.0, 6.0], "e") == []  # scale: cosine 1
    assert soak_check.compare_vector(vector, [1.0, 2.0, 3.1], "e")


def test_compare_checks_masks_by_iou() -> None:

    def rle(mask: np.ndarray) -> dict[str, object]:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {
            "format": "rle",
            "size": list(encoded["size"]),
            "counts": encoded["counts"].decode(),
        }

    full = np.zeros((100, 100), dtype=bool)
    full[10:90, 10:90] = True  # 6400 pixels
    one_off = full.copy()
    one_off[10, 10] = False  # IoU 0.99984
    chipped = full.copy()
    chipped[10:20, 10:20] = False  # IoU 0.984
    assert soak_check.compare({"mask": rle(full)}, {"mask": rle(one_off)}) == []
    assert soak_check.compare({"mask": rle(full)}, {"mask": rle(chipped)})


def test_a_504_passes_only_as_the_deadline_error_after_the_whole_deadline() -> None:
    import httpx
    import soak_traffic

    deadline = soak_traffic.DEADLINE_S
    late = httpx.Response(
        504, json={"error": "x", "error_type": "deadline_exceeded", "request_id": "r"}
    )
    assert soak_traffic.deadline_problem(late, deadline + 0.2) is None
    early = soak_traffic.deadline_problem(late, deadline - 5)
    assert early and "before the" in early
    hung = soak_traffic.deadline_problem(late, deadline + soak_traffic.DEADLINE_SLACK_S + 1)
    assert hung and "long past" in hung
    other = httpx.Response(504, json={"error": "x", "error_type": "internal_error"})
    assert soak_traffic.deadline_problem(other, deadline + 1)
    assert soak_traffic.deadline_problem(httpx.Response(504, content=b"<html>"), deadline + 1)


def test_the_server_5xx_count_keeps_the_deadline_504s_apart() -> None:
    import soak

    metrics = "\n".join(
        [
            'ortserve_requests_total{endpoint="/embed",model="m",status="200"} 90.0',
            'ortserve_requests_total{endpoint="/embed",model="m",status="504"} 3.0',
            'ortserve_requests_total{endpoint="/detect",model="d",status="500"} 1.0',
            'ortserve_requests_total{endpoint="/detect",model="d",status="503"} 2.0',
        ]
    )
    assert soak.server_5xx(metrics) == 3.0
    assert soak.server_5xx(metrics, deadline=True) == 3.0
