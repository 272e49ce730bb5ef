"""Log output: readable lines by default, one JSON object per line with `--log-json`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

ACCESS_LOGGER = "atrium.access"

# Attributes every LogRecord has; anything else was passed in `extra=` and is worth printing.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, extra fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-22 10:00:00 info  atrium.http: message key=value`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        # Access lines already say everything in their message; other records show their extras.
        extra = "" if record.name == ACCESS_LOGGER else " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_"))
        line = f"{ts} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if extra:
            line += f" {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """Send every log record to standard error in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # SQLAlchemy's echo logger adds its own handler; route it through ours instead.
    logging.getLogger("sqlalchemy.engine.Engine").handlers[:] = []
    # Alembic announces its dialect on every schema check; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


SECRET_QUERY_PARAMS = frozenset({"token"})


def redact_query(path_qs: str) -> str:
    """The request path with secret query values (`?token=`) replaced by `***`."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}=***" if eq and name.lower() in SECRET_QUERY_PARAMS else item)
    return f"{path}?{'&'.join(parts)}"


class AccessLogger(AbstractAccessLogger):
    """One line per request, with secrets kept out of the log."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = redact_query(request.path_qs)
        self.logger.info(
            '%s "%s %s" %s %s %.4fs', request.remote, request.method, path, response.status,
            response.body_length, time,
            extra={"method": request.method, "path": path, "status": response.status,
                   "bytes": response.body_length, "seconds": round(time, 6), "remote": request.remote})
