from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.tiny_models import build_repository


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one tiny real ONNX model per task and output format."""
    return build_repository(tmp_path_factory.mktemp("tiny-models"))


_PIL_OPEN = Image.open


@pytest.fixture(autouse=True)
def _undo_third_party_pil_patches() -> Iterator[None]:
    """Ultralytics replaces ``PIL.Image.open`` on import (and pip-installs a HEIF plugin on the
    first unidentified image). Keep that out of every other test in this process."""
    yield
    Image.open = _PIL_OPEN
