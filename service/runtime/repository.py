"""The model repository on disk: which folders are models, their versions, and poll-mode scans.

A repository holds one folder per model: either a complete model folder (``config.yaml``,
``model.onnx``, ...) = version 1, or numbered version folders (``<name>/1/``, ``<name>/2/``, each
complete) of which the ``version_policy`` of the highest one's config picks those that serve.
A folder whose (newest) config says ``task: pipeline`` is a pipeline. Hidden folders
(``.export-*`` staging folders) are never models.

Everything here reads files and is blocking: the registry calls it on worker threads once it
serves.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from service.model_config import config_task
from service.runtime.pipelines import Fingerprint

# Fingerprint (service.runtime.pipelines): a folder's files as (relative path, size, mtime);
# equal across two scans = not being written


def model_versions(folder: Path) -> dict[int, Path]:
    """``{version: folder}``: the folder itself as version 1, or its numbered version folders."""
    if (folder / "config.yaml").is_file():
        return {1: folder}
    versions: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            if child.name.isdigit() and int(child.name) > 0 and (child / "config.yaml").is_file():
                versions[int(child.name)] = child
    return versions


def repository_folders(root: Path) -> dict[str, Path]:
    """Model folders of a repository: visible folders with a config.yaml or version folders.
    Hidden ones (``.export-*`` staging folders) are never models."""
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and model_versions(p)
    }


def is_pipeline(folder: Path) -> bool:
    """A folder whose (newest) config.yaml says ``task: pipeline``."""
    versions = model_versions(folder)
    return bool(versions) and config_task(versions[max(versions)]) == "pipeline"


def folder_task(root: Path, name: str) -> str | None:
    """The task the repository folder ``name`` declares (None: no such model folder)."""
    versions = model_versions(root / name) if not name.startswith(".") else {}
    return config_task(versions[max(versions)]) if versions else None


def fingerprint(folder: Path) -> Fingerprint:
    files = []
    for path in sorted(folder.rglob("*")):
        with contextlib.suppress(OSError):  # a file removed while we look
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def scan(root: Path) -> dict[str, Fingerprint]:
    """Every model folder of the repository with its files now."""
    return {name: fingerprint(folder) for name, folder in repository_folders(root).items()}


class PollScans:
    """Poll mode's memory between scans: each folder's files at the previous scan, and how many
    scans in a row a served name's folder has been absent. An export replaces a folder by two
    renames, so one scan may miss it: a folder counts as gone after two."""

    def __init__(self) -> None:
        self._seen: dict[str, Fingerprint | None] = {}
        self._missing: dict[str, int] = {}

    def record(self, name: str, files: Fingerprint | None) -> None:
        """What a load read (start-up): the next scan compares with it."""
        self._seen[name] = files

    def stable(self, name: str, files: Fingerprint) -> bool:
        """``name`` was scanned with ``files``: unchanged since the previous scan (new or still
        being written: False, look again next time)."""
        previous = self._seen.get(name)
        self._seen[name] = files
        self._missing.pop(name, None)
        return files == previous

    def gone(self, name: str) -> bool:
        """``name`` was not in this scan: True once it has been absent for two scans."""
        self._seen.pop(name, None)
        self._missing[name] = self._missing.get(name, 0) + 1
        if self._missing[name] >= 2:
            del self._missing[name]
            return True
        return False
