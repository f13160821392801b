"""Write the hostile image corpus (tests/hostile/corpus.py) to a folder, for curl or other fuzzers.

The tests generate these bytes themselves at run time; nothing binary is committed. Usage:

    python scripts/make_hostile_corpus.py out/hostile
    curl -s -F file=@out/hostile/bomb_png_50000x50000.bin localhost:8000/classify   # → 413

Each file is ``<case>.bin``; ``expected.tsv`` lists the status and error_type every vision
endpoint must answer for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hostile.corpus import IMAGES  # after the path set-up above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the files (created)")
    args = parser.parse_args()
    folder: Path = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["case\tstatus\terror_type\tbytes"]
    for name, case in IMAGES.items():
        data = case.make()
        (folder / f"{name}.bin").write_bytes(data)
        lines.append(f"{name}\t{case.status}\t{case.error_type or '-'}\t{len(data)}")
    (folder / "expected.tsv").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(IMAGES)} images and expected.tsv to {folder}")


if __name__ == "__main__":
    main()
