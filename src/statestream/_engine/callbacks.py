"""Callbacks: outside input (a webhook, an API call) that moves a run waiting at a status."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic

from .._codec import check_text
from .._core.run import Run, Skip
from .._core.runstate import RunState
from .._core.types import StatusT, T
from ..errors import CodecError, InvalidInput, UnknownStatus, VersionConflict
from .usercode import call_user

if TYPE_CHECKING:
    from .._definition.specs import CallbackSpec
    from .runtime import Runtime

__all__ = ["CallbackOutcome", "CallbackResult", "run_callback"]


class CallbackOutcome(enum.Enum):
    """What a callback did."""

    APPLIED = "applied"
    """A callback function returned a status (or pause/cancel/save-and-repeat) and it was stored."""
    SKIPPED = "skipped"
    """Every callback function returned ``run.skip()``: nothing was written."""
    NOT_AT_STATUS = "not_at_status"
    """The run is not at the callback's status (it is elsewhere, or already moved on)."""
    STOPPED = "stopped"
    """The run is paused, cancelled or finished: the callback was not applied."""


@dataclass(frozen=True, slots=True)
class CallbackResult(Generic[T, StatusT]):
    """The outcome of :meth:`Workflow.callback` and the run as it is after it."""

    outcome: CallbackOutcome
    run: Run[T, StatusT]

    @property
    def applied(self) -> bool:
        return self.outcome is CallbackOutcome.APPLIED


def decode_payloads(specs: list[CallbackSpec[Any, Any]], payload: object) -> list[object]:
    """The payload as each callback wants it; raises InvalidInput before anything is loaded."""
    if isinstance(payload, str):
        check_text(payload, "callback payload")
    decoded: list[object] = []
    for spec in specs:
        codec = spec.payload_codec
        if codec is None:
            if isinstance(payload, str):
                decoded.append(payload.encode())
            elif isinstance(payload, bytes | bytearray | memoryview):
                decoded.append(bytes(payload))
            elif payload is None:
                decoded.append(b"")
            else:
                raise InvalidInput(
                    f"callback at {spec.status.name} takes bytes, got {type(payload).__name__}"
                )
        elif isinstance(payload, spec.payload_type):
            decoded.append(payload)
        elif isinstance(payload, bytes | bytearray | memoryview | str):
            raw = payload.encode() if isinstance(payload, str) else bytes(payload)
            try:
                decoded.append(codec.decode(raw))
            except CodecError as exc:
                raise InvalidInput(
                    f"callback payload for {spec.status.name} does not decode as "
                    f"{spec.payload_type.__name__}: {exc}"
                ) from exc
        else:
            raise InvalidInput(
                f"callback at {spec.status.name} takes {spec.payload_type.__name__} or its JSON, "
                f"got {type(payload).__name__}"
            )
    return decoded


async def run_callback(
    rt: Runtime[T, StatusT], foreign_id: str, status: StatusT, payload: object
) -> CallbackResult[T, StatusT]:
    specs = rt.d.callbacks.get(int(status))
    if not specs:
        raise UnknownStatus(f"workflow {rt.name!r} has no callback at {status.name}")
    payloads = decode_payloads(specs, payload)
    record = await rt.store.latest(rt.name, foreign_id)
    run = rt.to_run(record)
    if record.run_state.stopped or record.run_state.finished:
        return CallbackResult(CallbackOutcome.STOPPED, run)
    if record.status != int(status):
        return CallbackResult(CallbackOutcome.NOT_AT_STATUS, run)
    if run.run_state is RunState.INITIATED:
        run.run_state = RunState.RUNNING
    for spec, value in zip(specs, payloads, strict=True):
        result = await call_user(spec.fn, spec.is_async, run, value)
        if isinstance(result, Skip):
            continue
        try:
            written = await rt.apply_result(
                f"callback at {status.name}", spec.destinations, record, run, result
            )
        except VersionConflict:
            current = await rt.store.lookup(record.run_id)
            if current.status == record.status and not current.run_state.stopped:
                raise  # changed but still here: the caller may retry
            outcome = (
                CallbackOutcome.STOPPED
                if current.run_state.stopped or current.run_state.finished
                else CallbackOutcome.NOT_AT_STATUS
            )
            return CallbackResult(outcome, rt.to_run(current))
        return CallbackResult(CallbackOutcome.APPLIED, rt.to_run(written or record))
    return CallbackResult(CallbackOutcome.SKIPPED, run)
