"""``python -m service``: Settings → uvicorn.run(create_app(settings)).

One worker per process: every worker would load every model again, so scale out with replicas.
``ortserve serve`` (service.cli) runs the same ``serve`` with settings from its options.
"""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings


def serve(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        access_log=False,  # service.access logs each request with its id and model
        log_config=None,  # keep the handler configured above (JSON or text)
    )


def main() -> None:
    serve(Settings())


if __name__ == "__main__":
    main()
