"""Parity: PyTorch vs ONNX Runtime on the same real inputs, at batch 1 and batch > 1; and the
latency of graphs side by side. The fp16 conversion and its check against fp32 are in
``export.fp16``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

log = logging.getLogger("export")


class ParityError(Exception):
    """ONNX Runtime disagrees with PyTorch beyond the stated tolerance."""


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


def mask_iou(ref: np.ndarray, got: np.ndarray) -> float:
    """Smallest per-instance IoU of two ``[N, ...]`` probability masks binarised at 0.5."""
    if ref.shape[0] == 0:
        return 1.0
    a = ref.reshape(ref.shape[0], -1) >= 0.5
    b = got.reshape(got.shape[0], -1) >= 0.5
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).min())


def check_parity(
    torch_fn: Callable[..., Any],
    onnx_path: Path,
    samples: Sequence[dict[str, np.ndarray]],
    *,
    atol: float,
    rtol: float = 0.0,
    min_cosine: float | None = None,
    name: str = "model",
    batch_axis: bool = True,
    mask_outputs: dict[str, str] | None = None,
    min_mask_iou: float = 0.99,
    mask_min_score: float = 0.3,
) -> dict[str, Any]:
    """Run every sample (a dict of named input arrays) through both and compare all outputs.

    ``torch_fn(**tensors)`` returns a tensor or a tuple of tensors in ONNX output order.
    ``mask_outputs`` maps probability-mask outputs ``[N,1,H,W]`` to their score output: masks are
    compared binarised at 0.5 and each instance scoring at least ``mask_min_score`` (what a client
    would be shown) must reach ``min_mask_iou`` — edge pixels of pasted masks legitimately differ
    between PyTorch's and the ONNX graph's interpolation.
    Returns a report; raises ParityError when any output differs beyond ``atol + rtol·|ref|``
    (or, with ``min_cosine``, when a row's cosine similarity falls below it).
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    checks: list[dict[str, Any]] = []
    worst = 0.0
    for sample in samples:
        with torch.no_grad():
            expected = torch_fn(**{k: torch.from_numpy(v) for k, v in sample.items()})
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        got = session.run(output_names, sample)
        batch = next(iter(sample.values())).shape[0] if batch_axis else 1
        for out_name, ref, val in zip(output_names, expected, got, strict=True):
            ref_np = ref.detach().cpu().numpy()
            if ref_np.shape != val.shape:
                raise ParityError(
                    f"{name}: output {out_name} shape {val.shape} != PyTorch {ref_np.shape}"
                )
            if mask_outputs and out_name in mask_outputs:
                scores = got[output_names.index(mask_outputs[out_name])]
                keep = scores >= mask_min_score
                iou = mask_iou(ref_np[keep], val[keep])
                checks.append(
                    {
                        "batch": int(batch),
                        "output": out_name,
                        "min_mask_iou": iou,
                        "allowed": min_mask_iou,
                        "ok": iou >= min_mask_iou,
                    }
                )
                log.info(
                    "parity %s %s: min mask IoU %.4f (needs %.2f)",
                    name,
                    out_name,
                    iou,
                    min_mask_iou,
                )
                continue
            diff = float(np.max(np.abs(ref_np.astype(np.float64) - val))) if ref_np.size else 0.0
            allowed = atol + rtol * float(np.max(np.abs(ref_np))) if ref_np.size else atol
            entry: dict[str, Any] = {
                "batch": int(batch),
                "output": out_name,
                "max_abs_diff": diff,
                "allowed": allowed,
            }
            ok = diff <= allowed
            if min_cosine is not None and ref_np.size:
                cos = float(cosine(ref_np, val).min())
                entry["min_cosine"] = cos
                ok = ok and cos >= min_cosine
            entry["ok"] = ok
            checks.append(entry)
            worst = max(worst, diff)
            log.info(
                "parity %s batch=%d %s: max|Δ|=%.3g (allowed %.3g)",
                name,
                batch,
                out_name,
                diff,
                allowed,
            )
    report = {
        "model": name,
        "atol": atol,
        "rtol": rtol,
        "min_cosine": min_cosine,
        "max_abs_diff": worst,
        "checks": checks,
        "passed": all(c["ok"] for c in checks),
    }
    if not report["passed"]:
        bad = next(c for c in checks if not c["ok"])
        raise ParityError(
            f"{name}: parity failed on output {bad['output']} at batch {bad['batch']}: {bad}"
        )
    return report


def compare_latency_ms(
    onnx_paths: Sequence[Path],
    feeds: dict[str, np.ndarray],
    *,
    runs: int = 30,
    warmup: int = 3,
    threads: int = 1,
) -> list[float]:
    """Median wall time of one ONNX Runtime CPU run of each graph, in milliseconds.

    The graphs run interleaved (A, B, A, B, ...) so that load from other processes on a shared
    machine hits them alike; one intra-op thread by default, so the numbers are about the
    graphs rather than the number of idle cores. Used to decide whether ``--optimize`` pays and
    to report what ``--quantize int8`` buys.
    """
    import time

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(p), sess_options=options, providers=["CPUExecutionProvider"])
        for p in onnx_paths
    ]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for session, bucket in zip(sessions, times, strict=True):
            started = time.perf_counter()
            session.run(None, feeds)
            bucket.append(time.perf_counter() - started)
    return [float(np.median(bucket) * 1000.0) for bucket in times]
