"""The service's log lines: text, or JSON (``ORTSERVE_LOG_FORMAT=json``), one object per line
with the request id; with worker processes each line says which process wrote it."""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson

from service.middleware import request_id_var
from service.settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


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
