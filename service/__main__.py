"""``python -m service``: Settings → service.server.run(create_app(settings)) (uvicorn).

``ORTSERVE_WORKERS`` > 1 adds HTTP processes that share this one's models (``service.workers``);
scale out beyond one machine with replicas. ``ortserve serve`` (service.cli) runs the same
``serve`` with settings from its options.
"""

from __future__ import annotations

import logging
import os
import sys

from service import server
from service.app import create_app
from service.logs import JsonFormatter
from service.runtime.session import SessionError, resolve_providers
from service.settings import Settings

log = logging.getLogger("service")


def _with_pid(record: logging.LogRecord) -> bool:
    record.pid = os.getpid()  # the JSON formatter writes attributes a record was given
    return True


def configure_logging(settings: Settings) -> None:
    """Text or JSON lines on stderr; with several processes (``workers``) each line says which
    process wrote it."""
    several = settings.workers > 1
    text = "%(asctime)s %(levelname)s " + ("[%(process)d] " if several else "")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter(text + "%(name)s: %(message)s")
    )
    if several:
        handler.addFilter(_with_pid)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def serve(settings: Settings) -> None:
    configure_logging(settings)
    try:  # ORTSERVE_REQUIRE_CUDA on a build without CUDA: one clear line, not a traceback
        resolve_providers(settings.providers, settings.require_cuda)
    except SessionError as exc:
        log.error("not starting: %s", exc)
        sys.exit(2)
    server.run(create_app(settings), settings)


def main() -> None:
    serve(Settings())


if __name__ == "__main__":
    main()
