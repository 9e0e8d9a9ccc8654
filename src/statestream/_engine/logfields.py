"""The structured fields of the engine's log lines.

Every record the ``statestream`` logger emits carries five attributes, for a JSON formatter or a
log pipeline to index: ``workflow``, ``run_id``, ``foreign_id``, ``status`` and ``role``
(``""`` when a line is not about one). A call site about a run passes what it knows
(``log.warning(..., extra=of_event(event, names))``); :class:`ContextFields`, installed on the
logger when this module is imported, fills the workflow and the role from the background process
the current task works for, and ``""`` for whatever is still missing. It runs only for lines
that are emitted (after the level check), never on a path that logs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .._core.records import Event, Record
from .lease import HELD

__all__ = ["FIELDS", "ContextFields", "fields", "of_event", "of_record"]

#: The attributes every engine log record carries.
FIELDS = ("workflow", "run_id", "foreign_id", "status", "role")


def fields(
    workflow: str = "",
    *,
    run_id: str = "",
    foreign_id: str = "",
    status: str = "",
    role: str = "",
) -> dict[str, str]:
    """The ``extra`` of a log call (empty values are filled from the context, if it has them)."""
    return {
        "workflow": workflow,
        "run_id": run_id,
        "foreign_id": foreign_id,
        "status": status,
        "role": role,
    }


def _name(status: int, names: Mapping[int, str] | None) -> str:
    if names is not None:
        name = names.get(status)
        if name is not None:
            return name
    return str(status)


def of_event(
    event: Event, names: Mapping[int, str] | None = None, *, workflow: str = ""
) -> dict[str, str]:
    """The fields of a line about ``event`` (``names``: status value -> name)."""
    headers = event.headers
    return fields(
        workflow or headers.get("workflow_name", ""),
        run_id=event.key,
        foreign_id=headers.get("foreign_id", ""),
        status=_name(event.type, names),
    )


def of_record(record: Record) -> dict[str, str]:
    """The fields of a line about the run ``record``."""
    return fields(
        record.workflow_name,
        run_id=record.run_id,
        foreign_id=record.foreign_id,
        status=record.status_description or str(record.status),
    )


class ContextFields(logging.Filter):
    """Gives every record the five :data:`FIELDS`: the workflow and role of the current
    background process when the call did not name them, ``""`` for the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = record.__dict__
        held = HELD.get()
        if held is not None:
            if not values.get("role"):
                values["role"] = held.process.role
            if not values.get("workflow"):
                values["workflow"] = held.supervisor._workflow
        for name in FIELDS:
            if name not in values:
                values[name] = ""
        return True


def install(logger: logging.Logger) -> None:
    """Add :class:`ContextFields` to ``logger`` (once)."""
    if not any(isinstance(f, ContextFields) for f in logger.filters):
        logger.addFilter(ContextFields())


install(logging.getLogger("statestream"))
