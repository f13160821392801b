"""The parity reference for NanoDet: the original TF.js graph run by ``@tensorflow/tfjs`` under
node (``export/tfjs/reference.cjs``, pure JavaScript; no TensorFlow in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from export.common import ExportError
from export.nanodet_graph import BINS, SIZE, STRIDES


def tfjs_outputs(
    tfjs_model: Path, tensors: list[np.ndarray], node_path: Path
) -> list[dict[str, np.ndarray]]:
    """Each ``float32[1,3,H,W]`` through the original TF.js graph under node."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        listing = []
        for i, tensor in enumerate(tensors):
            np.ascontiguousarray(tensor, dtype="<f4").tofile(folder / f"in{i}")
            listing.append({"file": f"in{i}", "shape": list(tensor.shape)})
        (folder / "inputs.json").write_text(json.dumps(listing))
        script = Path(__file__).parent / "tfjs" / "reference.cjs"
        env = {**os.environ, "NODE_PATH": str(node_path)}
        done = subprocess.run(
            ["node", str(script), str(tfjs_model), str(folder), str(folder)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ExportError(f"the TF.js reference failed: {done.stderr.strip()[-2000:]}")
        report = json.loads((folder / "outputs.json").read_text())
        return [
            {
                out["name"]: np.fromfile(folder / out["file"], dtype="<f4").reshape(out["shape"])
                for out in entry["outputs"]
            }
            for entry in report
        ]


def combined_outputs(outputs: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """The reference's six outputs in ``output0``'s layout ``[1, N, C+4·bins]``."""
    by_shape = {tuple(v.shape[1:]): v for v in outputs.values()}
    return np.concatenate(
        [
            np.concatenate(
                [by_shape[((SIZE // s) ** 2, num_classes)], by_shape[((SIZE // s) ** 2, 4 * BINS)]],
                axis=2,
            )
            for s in STRIDES
        ],
        axis=1,
    )
