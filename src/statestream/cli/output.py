"""Output helpers of the command line: Rich consoles (colour on a terminal only), tables, JSON.

Colour and styles only when the stream is a terminal and ``NO_COLOR`` is not set
(https://no-color.org); otherwise plain text, byte for byte what scripts parse.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .._core.records import Record
from .._core.runstate import RunState

__all__ = [
    "console",
    "dumps",
    "echo",
    "format_time",
    "object_json",
    "record_dict",
    "render",
    "state_colour",
    "styled",
    "table",
    "wants_colour",
]

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


def console(
    stream: TextIO | None = None, *, err: bool = False, width: int | None = None
) -> Console:
    """A Rich console on ``stream`` (default: the current ``sys.stdout``/``sys.stderr``).

    Without colour it writes no escape codes at all (not even bold), so pipes get plain text.
    """
    out = stream if stream is not None else (sys.stderr if err else sys.stdout)
    colour = wants_colour(out)
    return Console(
        file=out,
        force_terminal=colour,
        color_system="auto" if colour else None,
        no_color=not colour,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=width is None,
        width=width,
    )


def state_colour(state: RunState) -> str:
    return _STATE_COLOURS.get(state, "dim")


def styled(*parts: str | Text | tuple[str, str]) -> Text:
    """Text from plain strings and ``(text, style)`` pairs (user data is never markup)."""
    return Text.assemble(*parts)


def echo(text: str | Text = "", *, err: bool = False) -> None:
    """Print to the current ``sys.stdout`` (or ``sys.stderr``), flushed at once."""
    stream = sys.stderr if err else sys.stdout
    if isinstance(text, str):
        print(text, file=stream, flush=True)
        return
    console(stream).print(text)
    stream.flush()


def render(renderable: RenderableType, stream: TextIO | None = None) -> str:
    """What ``renderable`` looks like on ``stream``, at its natural width, without trailing
    blanks (escape codes only when that stream gets colour)."""
    out = stream if stream is not None else sys.stdout
    buffer = io.StringIO()
    colour = wants_colour(out)
    Console(
        file=buffer,
        force_terminal=colour,
        color_system="standard" if colour else None,
        no_color=not colour,
        highlight=False,
        markup=False,
        emoji=False,
        width=100_000,
    ).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], colours: Sequence[Sequence[str]] = ()
) -> None:
    """Print left-aligned columns, two spaces apart; ``colours[i][j]`` is the style of cell j
    of row i ("" for none). Headers are bold on a terminal."""
    grid = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
        show_lines=False,
    )
    for header in headers:
        grid.add_column(header, no_wrap=True, overflow="ignore")
    for i, row in enumerate(rows):
        styles = colours[i] if i < len(colours) else ()
        grid.add_row(
            *(Text(cell, style=styles[j] if j < len(styles) else "") for j, cell in enumerate(row))
        )
    echo(render(grid))


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
