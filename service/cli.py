"""The ``ortserve`` command: serve, export, models, bench.

    ortserve serve --model-repository models --port 8000     # options mirror ORTSERVE_* settings
    ortserve models --repository models --validate           # check a repository without serving
    ortserve export <args of python -m export>
    ortserve bench <args of python -m benchmarks.run>

Built on click (already a dependency of uvicorn). ``python -m service`` keeps working and reads
only the environment.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import ValidationError

from service import __version__
from service.model_config import ConfigError, ModelConfig, load_model_config
from service.runtime.model import describe_failure
from service.runtime.registry import (
    ModelRegistry,
    is_pipeline,
    model_versions,
    repository_folders,
)
from service.runtime.session import SessionError
from service.settings import Settings

# secrets on a command line end up in `ps` and shell history: these stay environment-only
_ENV_ONLY = frozenset({"api_keys"})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ortserve")
def main() -> None:
    """ortserve: batched, typed REST inference for ONNX models."""


# -- serve -----------------------------------------------------------------------------------
def _settings_options() -> list[click.Option]:
    """One option per Settings field: ``--model-repository`` ↔ ``ORTSERVE_MODEL_REPOSITORY``.

    Unset options fall back to the environment, then to the defaults.
    """
    options: list[click.Option] = []
    for name, field in Settings.model_fields.items():
        if name in _ENV_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{field.description or ''} [env ORTSERVE_{name.upper()}; default {shown}]"
        annotation = field.annotation
        kind: Any = click.STRING
        if annotation is bool:
            options.append(
                click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
            )
            continue
        if get_origin(annotation) is Literal:
            kind = click.Choice([str(a) for a in get_args(annotation)])
        elif annotation is int:
            kind = click.INT
        elif annotation is float:
            kind = click.FLOAT
        elif annotation is Path:
            kind = click.Path(path_type=Path)
        elif get_origin(annotation) is list:
            help_text = "Comma-separated. " + help_text
        options.append(click.Option([flag, name], type=kind, default=None, help=help_text))
    return options


def _serve(**options: Any) -> None:
    from service.__main__ import serve  # imports uvicorn and the app: only when serving

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise click.UsageError(_validation_message(exc)) from None
    serve(settings)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
        for e in exc.errors()
    )


main.add_command(
    click.Command(
        "serve",
        callback=_serve,
        params=list(_settings_options()),
        help="Serve a model repository over HTTP (the same as python -m service).",
        short_help="Serve a model repository over HTTP.",
    )
)


# -- export / bench: thin wrappers over the modules that own them ------------------------------
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def delegate(module: str, args: Sequence[str]) -> int:
    """Run ``python -m <module> <args>`` in a child process; returns its exit code."""
    return subprocess.call([sys.executable, "-m", module, *args])


@main.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(args: tuple[str, ...]) -> None:
    """Export PyTorch models to ONNX: python -m export ARGS (needs the export extra)."""
    sys.exit(delegate("export", args))


@main.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark the service: python -m benchmarks.run ARGS (from a source checkout)."""
    sys.exit(delegate("benchmarks.run", args))


# -- models ----------------------------------------------------------------------------------
@dataclass
class ModelRow:
    name: str
    task: str = "-"
    format: str = "-"
    max_batch_size: str = "-"
    inputs: str = "-"
    provider: str = "-"
    status: str = "ok"
    error: str | None = None


def _row(name: str, config: ModelConfig | None) -> ModelRow:
    row = ModelRow(name)
    if config is not None:
        row.task, row.format = config.task, config.format
        row.max_batch_size = str(config.batching.max_batch_size)
        row.inputs = " ".join(
            f"{t.name}:{t.dtype}[{','.join(map(str, t.dims))}]" for t in config.inputs
        )
    return row


def _pipeline_row(folder: Path, registry: ModelRegistry) -> ModelRow:
    """A pipeline: its config, and that the models it names are in the repository with the
    right tasks (it has no graph of its own to validate)."""
    try:
        config = registry.check_pipeline(folder.name, folder)
    except ConfigError as exc:
        return ModelRow(folder.name, task="pipeline", status="failed", error=str(exc))
    models = " → ".join(getattr(step, "model", step.step) for step in config.steps)
    return ModelRow(folder.name, task="pipeline", inputs=models, status="ok")


def _check_config(folder: Path) -> ModelRow:
    """Config and files only (every version folder): no ONNX Runtime."""
    row = ModelRow(folder.name)
    for version, path in sorted(model_versions(folder).items()):
        try:
            config, _ = load_model_config(path, folder.name)
        except ConfigError as exc:
            return ModelRow(folder.name, status="failed", error=str(exc))
        row = _row(folder.name, config)
        if not (path / config.model_file).is_file():
            row.status = "failed"
            row.error = f"model {folder.name!r} version {version}: model_file {config.model_file!r} not found"
            return row
    return row


def _validate(folder: Path, registry: ModelRegistry) -> ModelRow:
    """What start-up does for one model: config, ONNX session, graph check, warm-up run."""
    try:
        # the registry's own builder (and through it the one processor factory), so this check
        # can never drift from start-up
        built = registry.build(folder.name, folder)
    except Exception as exc:
        config = None
        with contextlib.suppress(ConfigError):
            config = _newest_config(folder)
        row = _row(folder.name, config)
        row.status, row.error = "failed", describe_failure(folder.name, exc)
        return row
    latest = built[max(built)]
    row = _row(folder.name, latest.config)
    row.status = "ready"
    row.provider = latest.session.provider.removesuffix("ExecutionProvider")
    return row


def _newest_config(folder: Path) -> ModelConfig | None:
    versions = model_versions(folder)
    return load_model_config(versions[max(versions)], folder.name)[0] if versions else None


def _table(rows: Sequence[ModelRow], validated: bool) -> str:
    columns = ["name", "task", "format", "max_batch_size", "inputs"]
    columns += ["provider", "status"] if validated else ["status"]
    titles = {"max_batch_size": "BATCH"}
    cells = [[titles.get(c, c.upper()) for c in columns]]
    cells += [[str(getattr(r, c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        text = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        if n and row[-1] == "failed":
            text = click.style(text, fg="red")
        lines.append(text)
    return "\n".join(lines)


@main.command()
@click.option(
    "--repository",
    "-r",
    type=click.Path(path_type=Path),
    default=None,
    help="Model repository folder [default: ORTSERVE_MODEL_REPOSITORY or models].",
)
@click.option(
    "--validate",
    is_flag=True,
    help="Also load each ONNX graph, check it against its config and run a warm-up batch.",
)
@click.option(
    "--providers",
    type=click.Choice(["auto", "cpu", "cuda", "openvino"]),
    default="cpu",
    show_default=True,
    help="Execution providers for --validate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(repository: Path | None, validate: bool, providers: str, as_json: bool) -> None:
    """List (and validate) a model repository without serving it; exit 1 on any error."""
    overrides: dict[str, Any] = {"providers": providers, "strict_startup": False}
    if repository is not None:
        overrides["model_repository"] = repository
    settings = Settings(**overrides)
    root = settings.model_repository
    if not root.is_dir():
        raise click.ClickException(f"model repository {str(root)!r} is not a directory")
    folders = list(repository_folders(root).values())
    rows: list[ModelRow] = []
    pipelines = [folder for folder in folders if is_pipeline(folder)]
    folders = [folder for folder in folders if folder not in pipelines]
    if validate:
        registry = ModelRegistry(settings)
        try:
            registry.providers  # noqa: B018 - fail early on require_cuda without CUDA
        except SessionError as exc:
            raise click.ClickException(str(exc)) from None
        if sys.stderr.isatty():  # a bar in a terminal; CI logs get just the table
            with click.progressbar(
                folders,
                label=f"validating {len(folders)} model(s)",
                item_show_func=lambda p: p.name if p is not None else None,
                file=sys.stderr,
            ) as bar:
                rows = [_validate(folder, registry) for folder in bar]
        else:
            rows = [_validate(folder, registry) for folder in folders]
    else:
        rows = [_check_config(folder) for folder in folders]
    checker = ModelRegistry(settings)  # reads folders only: no model is loaded
    rows += [_pipeline_row(folder, checker) for folder in pipelines]
    failed = [r for r in rows if r.status == "failed"]
    if as_json:
        click.echo(json.dumps({"repository": str(root), "models": [asdict(r) for r in rows]}))
    elif not rows:
        click.echo(f"no models in {root} (folders with a config.yaml)")
    else:
        click.echo(_table(rows, validate))
        for row in failed:
            click.echo(click.style(f"error: {row.error}", fg="red"), err=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
