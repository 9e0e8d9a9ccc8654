"""Log output for statestream's structured log lines.

Every line the engine logs (the ``statestream`` logger) carries ``workflow``, ``run_id``,
``foreign_id``, ``status`` and ``role`` as record attributes (``""`` when a line is not about
one). :class:`JsonFormatter` writes each record as one JSON object with those fields, which is
what ``statestream worker --log-format json`` uses::

    handler = logging.StreamHandler()
    handler.setFormatter(statestream.logs.JsonFormatter())
    logging.getLogger("statestream").addHandler(handler)
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from ._engine.logfields import FIELDS

__all__ = ["FIELDS", "JsonFormatter"]

#: LogRecord attributes that are not the caller's ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the five statestream fields, any other ``extra`` the call passed (as text
    unless JSON can hold it), and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            out[name] = getattr(record, name, "")
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in out:
                out[name] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)
