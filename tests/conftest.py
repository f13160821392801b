from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import build_repository


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one tiny real ONNX model per task and output format."""
    return build_repository(tmp_path_factory.mktemp("tiny-models"))
