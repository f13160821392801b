"""Calibration and held-out images for int8 quantization: the folder a caller names, or the
sample photos installed packages ship, split by photo into two disjoint sets and, where there are
few photos, expanded into seeded random crops."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from export.common import MAX_IMAGE_PIXELS, ExportError

MIN_AS_IS = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# (package, folder inside it): sample photos shipped by packages of the export extra
PHOTO_FOLDERS = (
    ("skimage", "data"),
    ("matplotlib", "mpl-data/sample_data"),
    ("sklearn", "datasets/images"),
)


@dataclass(frozen=True)
class ImageSets:
    calibration: list[bytes]
    heldout: list[bytes]
    source: dict[str, Any]


def builtin_photos() -> list[tuple[str, bytes]]:
    """(name, file bytes) of the sample photos installed packages ship, sorted by name."""
    photos: list[tuple[str, bytes]] = []
    for package, sub in PHOTO_FOLDERS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and _decodes(path.read_bytes()):
                photos.append((f"{package}:{path.name}", path.read_bytes()))
    return sorted(photos)


def _decodes(data: bytes) -> bool:
    from service.errors import ServiceError
    from service.tasks.imaging import decode_image

    try:
        decoded = decode_image(data, max_pixels=MAX_IMAGE_PIXELS)
    except ServiceError:
        return False
    return min(decoded.orig_w, decoded.orig_h) >= 64


def folder_photos(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the decodable image files under ``folder`` (recursively), by name."""
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: not a folder")
    photos = [
        (str(p.relative_to(folder)), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    photos = [(name, data) for name, data in photos if _decodes(data)]
    if len(photos) < 2:
        raise ExportError(f"--calibration {folder}: needs at least 2 decodable images")
    return photos


def split_photos(
    photos: Sequence[tuple[str, bytes]],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(calibration, held-out): every third photo by name is held out; disjoint, both
    non-empty."""
    ordered = sorted(photos)
    heldout = [p for i, p in enumerate(ordered) if i % 3 == 1]
    calib = [p for i, p in enumerate(ordered) if i % 3 != 1]
    return calib, heldout


def random_crops(photos: Sequence[bytes], count: int, seed: int) -> list[bytes]:
    """``count`` JPEGs: random crops (¼ to all of the area, aspect ¾–4⁄3), half mirrored,
    cycling over ``photos``. Seeded: the same call gives the same bytes."""
    from service.tasks.imaging import decode_image

    rng = np.random.default_rng(seed)
    images = [decode_image(p, max_pixels=MAX_IMAGE_PIXELS).image for p in photos]
    out: list[bytes] = []
    for i in range(count):
        img = images[i % len(images)]
        w, h = img.size
        area = w * h * rng.uniform(0.25, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_sets(
    calibration: Path | None,
    *,
    calibration_count: int = 128,
    heldout_count: int = 200,
    seed: int = 0,
    photos: Sequence[tuple[str, bytes]] | None = None,
) -> ImageSets:
    """Calibration and held-out images (encoded bytes: they go through the service's decoder),
    from disjoint photos. Parts of at least ``MIN_AS_IS`` images (or the count asked) are used
    as they are, at most ``calibration_count`` / ``heldout_count`` of them; fewer photos (the
    built-in set) are expanded into random crops."""
    if photos is None:
        photos = folder_photos(calibration) if calibration is not None else builtin_photos()
    if len(photos) < 2:
        raise ExportError("no calibration images: pass --calibration DIR")
    calib, heldout = split_photos(photos)

    def expand(part: list[tuple[str, bytes]], count: int, offset: int) -> list[bytes]:
        if len(part) >= min(count, MIN_AS_IS):  # enough real images: as they are
            return [data for _, data in part[:count]]
        return random_crops([data for _, data in part], count, seed + offset)

    source = {
        "calibration": str(calibration) if calibration is not None else "built-in sample photos",
        "calibration_photos": [name for name, _ in calib],
        "heldout_photos": [name for name, _ in heldout],
        "seed": seed,
    }
    return ImageSets(expand(calib, calibration_count, 0), expand(heldout, heldout_count, 1), source)
