"""Which background processes a workflow runs, under which roles, in a stable order."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

from .._definition.options import ProcessOptions
from .connect import connection_body
from .connector import connector_body
from .dispatch import Body
from .processes import (
    delete_body,
    hook_body,
    pause_retry_body,
    step_body,
)
from .relay import relay_body
from .retention import retention_body
from .runtime import Runtime
from .timeouts import inserter_body, poller_body

__all__ = ["ProcessSpec", "process_specs", "role_name"]

#: (process name, role, body, options)
ProcessSpec = tuple[str, str, Body, ProcessOptions]


def role_name(*parts: object) -> str:
    return "-".join(str(p) for p in parts).lower().replace(" ", "_")


def process_specs(
    rt: Runtime[Any, Any], *, outbox: bool, extra: Iterable[ProcessSpec] = ()
) -> list[ProcessSpec]:
    """Every background process of the workflow (``extra``: its schedules)."""
    d = rt.d
    name = rt.name
    specs: list[ProcessSpec] = []
    for status, spec in d.steps.items():
        n = spec.options.parallel_count
        label = spec.status.name.lower()
        for i in range(n):
            role = role_name(name, status, "consumer", i + 1, "of", n)
            body = step_body(rt, spec, i, n, role)
            specs.append((f"{label}-consumer-{i + 1}-of-{n}", role, body, spec.options))
    for status, tspec in d.timeouts.items():
        label = tspec.status.name.lower()
        role = role_name(name, status, "timeout-auto-inserter-consumer")
        body = inserter_body(rt, tspec, role)
        specs.append((f"{label}-timeout-auto-inserter-consumer", role, body, tspec.options))
        role = role_name(name, status, "timeout-consumer")
        body = poller_body(rt, tspec, role)
        specs.append((f"{label}-timeout-consumer", role, body, tspec.options))
    for cspec in d.connectors:
        n = cspec.options.parallel_count
        for i in range(n):
            role = role_name(cspec.name, "connector-to", name, "consumer", i + 1, "of", n)
            specs.append((role, role, connector_body(rt, cspec, i, n, role), cspec.options))
    for conn in d.connections:
        n = conn.options.parallel_count
        for i in range(n):
            role = role_name(conn.name, "connection-to", name, "consumer", i + 1, "of", n)
            specs.append((role, role, connection_body(rt, conn, i, n, role), conn.options))
    for state, hook in d.hooks.items():
        label = state.name.lower()
        role = role_name(name, label, "run-state-change-hook-consumer")
        specs.append(
            (
                f"{label}-run-state-change-hook-consumer",
                role,
                hook_body(rt, hook, role),
                hook.options,
            )
        )
    role = role_name(name, "delete-consumer")
    specs.append(("delete-consumer", role, delete_body(rt, role, d.defaults), d.defaults))
    if d.pause_retry is not None:
        role = role_name(name, "paused-records-retry-consumer")
        body = pause_retry_body(rt, role, d.defaults)
        # It holds each event for pause_retry on purpose: not a lag to alert on.
        opts = dataclasses.replace(d.defaults, lag=d.pause_retry)
        specs.append(("paused-records-retry-consumer", role, body, opts))
    if d.retention is not None:
        role = role_name(name, "retention")
        body = functools.partial(retention_body, rt)
        specs.append(("retention", role, body, d.defaults))
    specs.extend(extra)
    if outbox:
        role = role_name(name, "outbox-consumer")
        body = functools.partial(relay_body, rt)
        specs.append(("outbox-consumer", role, body, d.outbox_options))
    return specs
