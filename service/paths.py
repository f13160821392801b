"""Paths a config names, held inside the folder they belong to (issue 30: a load call named
``/etc/passwd`` as a model's labels and the server read it). Pure: no service imports."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


class PathEscapeError(ValueError):
    """A path that would leave its folder; the message says how, for a config error."""


def relative_path_error(value: str) -> str | None:
    """Why ``value`` cannot name a place below a folder (empty, absolute, ``..``), or None.
    Text only; ``inside`` also follows symlinks."""
    if not value.strip() or value.strip() in (".", "./"):
        return "is empty"
    if (
        PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or (PureWindowsPath(value).drive)
    ):
        return "is an absolute path; name a file inside the model folder"
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        return "contains '..'; name a file inside the model folder"
    return None


def inside(folder: Path, value: str) -> Path:
    """``folder / value`` resolved (symlinks followed), or ``PathEscapeError`` when the value or
    a link on its way leaves ``folder``."""
    why = relative_path_error(value)
    if why is not None:
        raise PathEscapeError(f"{value!r} {why}")
    base = folder.resolve()
    target = (base / value).resolve()
    if not target.is_relative_to(base):
        raise PathEscapeError(
            f"{value!r} leads outside the model folder through a symlink; the files a model "
            "uses must be inside its folder"
        )
    return target


def escaping_links(folder: Path) -> list[str]:
    """The symlinks below ``folder`` that lead outside it (relative paths, sorted): files a model
    might read without naming them in its config, such as ONNX external data (ONNX Runtime
    refuses absolute and ``..`` locations itself since 1.24, but not links in every release)."""
    base = folder.resolve()
    found = []
    for path in sorted(base.rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(base):
            found.append(str(path.relative_to(base)))
    return found
