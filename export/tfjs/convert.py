"""TF.js graph model → ONNX with tf2onnx, run by the throwaway build venv that has TensorFlow
(mk/coco.mk makes it); nothing else in the project imports TensorFlow. Standard library only.

    <tf-venv>/bin/python export/tfjs/convert.py MODEL_JSON OUT_ONNX [--opset 13]

The graph's fixed batch size of 1 becomes -1 first, so the converted graph keeps a free batch axis
where TensorFlow's shapes allow it (export.nanodet fixes the rest).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_json", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args()
    artifact = json.loads(args.model_json.read_text(encoding="utf-8"))
    for node in artifact["modelTopology"]["node"]:
        if node["op"] == "Placeholder":
            node["attr"]["shape"]["shape"]["dim"][0]["size"] = "-1"
    # beside the original: the weights' paths in the manifest are relative to the JSON
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", dir=args.model_json.parent, delete=False
    ) as patched:
        json.dump(artifact, patched)
    try:
        command = [sys.executable, "-m", "tf2onnx.convert", "--tfjs", patched.name]
        command += ["--output", str(args.out), "--opset", str(args.opset)]
        return subprocess.run(command, check=False).returncode
    finally:
        Path(patched.name).unlink()


if __name__ == "__main__":
    sys.exit(main())
