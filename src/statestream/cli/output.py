"""Output helpers of the command line: ANSI colour (TTY only), tables, JSON of records."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from .._core.records import Record
from .._core.runstate import RunState

__all__ = [
    "Style",
    "dumps",
    "echo",
    "format_time",
    "object_json",
    "record_dict",
    "state_colour",
    "table",
    "wants_colour",
]

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}

_STATE_COLOURS = {
    RunState.INITIATED: "blue",
    RunState.RUNNING: "cyan",
    RunState.PAUSED: "yellow",
    RunState.CANCELLED: "red",
    RunState.COMPLETED: "green",
    RunState.REQUESTED_DATA_DELETED: "magenta",
    RunState.DATA_DELETED: "dim",
}


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


class Style:
    """Wraps text in ANSI codes when the stream it is for is a colour terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = wants_colour(stream)

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles or not text:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"


def state_colour(state: RunState) -> str:
    return _STATE_COLOURS.get(state, "dim")


def echo(text: str = "", *, err: bool = False) -> None:
    """Print to the current ``sys.stdout`` (or ``sys.stderr``), flushed at once."""
    stream = sys.stderr if err else sys.stdout
    print(text, file=stream, flush=True)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], colours: Sequence[Sequence[str]] = ()
) -> list[str]:
    """Left-aligned columns; ``colours[i][j]`` is the style of cell j of row i ("" for none).

    Widths are measured on the plain text, so colour codes never shift the columns.
    """
    style = Style(sys.stdout)
    widths = [len(h) for h in headers]
    for row in rows:
        for j, cell in enumerate(row):
            widths[j] = max(widths[j], len(cell))

    def line(cells: Sequence[str], styles: Sequence[str]) -> str:
        out = []
        for j, cell in enumerate(cells):
            padded = cell if j == len(cells) - 1 else cell.ljust(widths[j])
            name = styles[j] if j < len(styles) else ""
            out.append(style(padded, name) if name else padded)
        return "  ".join(out).rstrip()

    lines = [line(headers, ["bold"] * len(headers))]
    for i, row in enumerate(rows):
        lines.append(line(row, colours[i] if i < len(colours) else ()))
    return lines


def format_time(when: datetime) -> str:
    """ISO 8601 to the second, for tables."""
    return when.isoformat(timespec="seconds")


def object_json(data: bytes) -> tuple[Any, str]:
    """A stored object as a JSON value: (value, "json"), or (base64 text, "base64") when the
    bytes are not JSON (a ``bytes`` workflow object, for instance)."""
    try:
        return json.loads(data.decode("utf-8")), "json"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return base64.b64encode(data).decode("ascii"), "base64"


def record_dict(
    record: Record, status_names: Mapping[int, str], *, with_object: bool = False
) -> dict[str, Any]:
    """A record as a JSON-ready dict (stable keys, for ``--json``)."""
    out: dict[str, Any] = {
        "workflow_name": record.workflow_name,
        "run_id": record.run_id,
        "foreign_id": record.foreign_id,
        "status": record.status,
        "status_name": status_names.get(record.status, record.status_description),
        "run_state": record.run_state.name,
        "version": record.version,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "run_state_reason": record.run_state_reason,
    }
    if with_object:
        out["status_description"] = record.status_description
        out["auto_resumes"] = record.auto_resumes
        value, encoding = object_json(record.object)
        out["object_encoding"] = encoding
        out["object"] = value
    return out


def dumps(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
