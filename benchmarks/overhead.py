"""The serving-overhead comparison in ``make bench``: ortserve beside NVIDIA Triton and mosec.

The comparison itself is a script kept beside the project, not in it (``serving-overhead.sh``: it
builds Triton and a mosec environment, serves the repository's GloVe and MobileNetV2 on all
three and prints two tables). ``make bench OVERHEAD=path/to/serving-overhead.sh`` runs it after
the other scenarios and keeps its numbers in the report, where the targets table reads them
(``overhead:<scenario>/<peer>``: ortserve over the peer, the median of per-round ratios;
``overhead:<scenario>-cores``: the cores ortserve's processes used under that load).

    python -m benchmarks.overhead OUTPUT.txt      # parse a saved run's output, print the JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PEERS = ("triton", "mosec")


def parse(text: str) -> dict[str, Any]:
    """The script's two tables: requests/s per server and ortserve's ratio to each peer per
    scenario, then the cores and the CPU ms per request of each server."""
    rates: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    cores: dict[str, dict[str, float]] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    table = 0
    for line in text.splitlines():
        cells = line.split()
        if cells[:2] == ["scenario", "ortserve"]:
            table = 1
            continue
        if cells[:2] == ["scenario", "server"]:
            table = 2
            continue
        if table == 1 and len(cells) == 6:
            scenario, *values = cells
            numbers = [None if v == "-" else float(v) for v in values]
            rates[scenario] = {
                server: n
                for server, n in zip(("ortserve", *PEERS), numbers[:3], strict=True)
                if n is not None
            }
            ratios[scenario] = {
                peer: n for peer, n in zip(PEERS, numbers[3:], strict=True) if n is not None
            }
        elif table == 2 and len(cells) == 4:
            scenario, server, used, per = cells
            cores.setdefault(scenario, {})[server] = float(used)
            cpu_ms.setdefault(scenario, {})[server] = float(per)
    if not ratios or not cores:
        raise ValueError("not the output of serving-overhead.sh (no tables found)")
    return {"requests_per_s": rates, "ratios": ratios, "cores": cores, "cpu_ms_per_request": cpu_ms}


def run(script: Path, models: Path, *, rounds: int = 3, duration_s: int = 8) -> dict[str, Any]:
    """Run the script from the project root on ``models``; its parsed tables and its output."""
    env = {**os.environ, "MODELS": str(models), "ROUNDS": str(rounds), "DUR": str(duration_s)}
    done = subprocess.run(
        ["bash", str(script)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return {**parse(done.stdout), "output": done.stdout, "script": str(script)}


def measure(metric: str, overhead: dict[str, Any]) -> float:
    """``overhead:<scenario>/<peer>`` or ``overhead:<scenario>-cores`` (``benchmarks.targets``)."""
    quantity = metric.removeprefix("overhead:")
    if quantity.endswith("-cores"):
        return float(overhead["cores"][quantity.removesuffix("-cores")]["ortserve"])
    scenario, _, peer = quantity.partition("/")
    return float(overhead["ratios"][scenario][peer])


if __name__ == "__main__":
    print(json.dumps(parse(Path(sys.argv[1]).read_text()), indent=2))
