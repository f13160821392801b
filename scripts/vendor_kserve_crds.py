"""Vendor KServe's published CRD schemas for tests/docker/test_kserve.py.

Writes, under tests/data/kserve/, the ``openAPIV3Schema`` of the ServingRuntime
(serving.kserve.io/v1alpha1) and InferenceService (serving.kserve.io/v1beta1) CRDs of one KServe
release, as compact gzipped JSON without the ``description`` texts (all the test needs: 28 kB
for both, from 2.2 MB of YAML), with the repository, tag, commit and path they came from.

    python scripts/vendor_kserve_crds.py KSERVE_GIT_DIR v0.20.0

KSERVE_GIT_DIR is a clone of https://github.com/kserve/kserve (a bare one will do); the CRDs are
read with ``git show TAG:config/crd/full/serving.kserve.io_<plural>.yaml``. The output is the
same bytes for the same tag (sorted keys, gzip without a timestamp).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "kserve"
CRDS = {"servingruntimes": "v1alpha1", "inferenceservices": "v1beta1"}


def without_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: without_descriptions(value)
            for key, value in schema.items()
            # a property may itself be named "description": only the texts go
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [without_descriptions(value) for value in schema]
    return schema


def vendor(git_dir: Path, tag: str) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(git_dir), *args], check=True, capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", f"{tag}^{{commit}}").strip()
    OUT.mkdir(parents=True, exist_ok=True)
    for plural, version in CRDS.items():
        path = f"config/crd/full/serving.kserve.io_{plural}.yaml"
        crd = yaml.safe_load(git("show", f"{tag}:{path}"))
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        document = {
            "source": {
                "repository": "https://github.com/kserve/kserve",
                "tag": tag,
                "commit": commit,
                "path": path,
                "license": "Apache-2.0",
            },
            "apiVersion": f"{crd['spec']['group']}/{version}",
            "kind": crd["spec"]["names"]["kind"],
            "openAPIV3Schema": without_descriptions(served["schema"]["openAPIV3Schema"]),
        }
        data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        target = OUT / f"{plural}.{version}.json.gz"
        target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{target}: {len(data)} bytes of JSON, {target.stat().st_size} gzipped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("git_dir", type=Path, help="a clone of github.com/kserve/kserve")
    parser.add_argument("tag", help="a release tag, e.g. v0.20.0")
    args = parser.parse_args()
    vendor(args.git_dir, args.tag)


if __name__ == "__main__":
    main()
