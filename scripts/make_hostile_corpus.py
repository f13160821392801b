"""Write the hostile image corpus (tests/hostile/corpus.py) to a folder, for curl or other fuzzers.

The tests generate these bytes themselves at run time; nothing binary is committed. Usage:

    python scripts/make_hostile_corpus.py out/hostile
    curl -s -F file=@out/hostile/bomb_png_50000x50000.bin localhost:8000/classify   # → 413

Each file is ``<case>.bin``; ``expected.tsv`` lists the status and error_type every vision
endpoint must answer for it.

``--mutants N`` also writes the input fuzzer's seeded mutants (tests/fuzz/mutations.py: N
truncated and N bit-flipped per format, every wrong-magic and huge-size variant) to
``mutants/<kind>-<format>-<n>.bin``, and its malformed multipart bodies to
``multipart/<name>.bin`` with their Content-Type in ``multipart/content-types.tsv``; each must be
answered a 4xx or a correct 200 (``--seed``: the same as ORTSERVE_FUZZ_SEED, default 32):

    curl -s -H "content-type: $(grep '^wrong-boundary' out/hostile/multipart/content-types.tsv \
        | cut -f2)" --data-binary @out/hostile/multipart/wrong-boundary.bin localhost:8000/classify
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.mutations import (  # after the path set-up above
    KINDS,
    framing_mutants,
    image_mutants,
    malformed_multipart,
)
from tests.hostile.corpus import IMAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the files (created)")
    parser.add_argument("--mutants", type=int, default=0, help="random mutants per format")
    parser.add_argument("--seed", type=int, default=32, help="the mutants' seed")
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
    if args.mutants > 0:
        write_mutants(folder, args.seed, args.mutants)


def write_mutants(folder: Path, seed: int, per_format: int) -> None:
    mutants = [m for kind in KINDS for m in image_mutants(kind, seed, per_format)]
    (folder / "mutants").mkdir(exist_ok=True)
    for mutant in mutants:
        (folder / "mutants" / f"{mutant.name}.bin").write_bytes(mutant.data)
    bodies = malformed_multipart() + framing_mutants(seed, 10 * per_format)
    (folder / "multipart").mkdir(exist_ok=True)
    for body in bodies:
        (folder / "multipart" / f"{body.name}.bin").write_bytes(body.body)
    types = "".join(f"{body.name}\t{body.content_type}\n" for body in bodies)
    (folder / "multipart" / "content-types.tsv").write_text(types)
    print(f"wrote {len(mutants)} image mutants and {len(bodies)} multipart bodies (seed {seed})")


if __name__ == "__main__":
    main()
