"""Loading ``module:attr`` targets of the command line into workflows."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._workflow import Workflow

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOAD",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_BACKEND",
    "AnyWorkflow",
    "CliError",
    "Target",
    "dedupe",
    "load_workflows",
    "parse_target",
    "pick_workflow",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_LOAD = 4
EXIT_BACKEND = 5

AnyWorkflow = Workflow[Any, Any]


class CliError(Exception):
    """An error the command line reports as one line, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    """``module.sub:attr.path`` as given on the command line."""

    text: str
    module: str
    attr: str


def parse_target(text: str) -> Target:
    """Checks the form only (ValueError if wrong); importing happens when the command runs."""
    module, sep, attr = text.partition(":")
    valid = (
        sep
        and all(part.isidentifier() for part in module.split("."))
        and all(part.isidentifier() for part in attr.split("."))
    )
    if not valid:
        raise ValueError(
            f"invalid target {text!r}: expected MODULE:ATTRIBUTE, for example "
            "'myapp.workflows:orders'"
        )
    return Target(text, module, attr)


def _import(target: Target) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            target.module == exc.name or target.module.startswith(exc.name + ".")
        ):
            raise CliError(
                EXIT_LOAD,
                f"cannot import module {target.module!r} of target {target.text!r}: {exc} "
                f"(run from the directory that contains it, or set PYTHONPATH)",
            ) from exc
        raise CliError(
            EXIT_LOAD, f"importing {target.module!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise CliError(
            EXIT_LOAD, f"importing {target.module!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    value: Any = module
    for i, part in enumerate(target.attr.split(".")):
        try:
            value = getattr(value, part)
        except AttributeError as exc:
            where = ".".join([target.module, *target.attr.split(".")[:i]])
            raise CliError(
                EXIT_LOAD, f"target {target.text!r}: {where!r} has no attribute {part!r}"
            ) from exc
    return value


def _workflows_of(value: Any) -> list[AnyWorkflow] | None:
    if isinstance(value, Workflow):
        return [value]
    if isinstance(value, list | tuple):
        found = list(value)
        if found and all(isinstance(wf, Workflow) for wf in found):
            return found
    return None


async def load_workflows(target: Target) -> list[AnyWorkflow]:
    """The workflows a target names: a Workflow, a list of them, or a zero-argument callable
    (sync or async) returning either."""
    value = _import(target)
    workflows = _workflows_of(value)
    if workflows is not None:
        return workflows
    if callable(value) and not isinstance(value, type):
        try:
            result = value()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise CliError(
                EXIT_LOAD, f"calling {target.text}() failed: {type(exc).__name__}: {exc}"
            ) from exc
        workflows = _workflows_of(result)
        if workflows is not None:
            return workflows
        raise CliError(
            EXIT_LOAD,
            f"{target.text}() returned {_kind(result)}, not a Workflow or a list of Workflows",
        )
    raise CliError(
        EXIT_LOAD,
        f"target {target.text!r} is {_kind(value)}, not a Workflow, a list of Workflows or a "
        "callable returning them",
    )


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple) and not value:
        return f"an empty {type(value).__name__}"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def dedupe(workflows: Iterable[AnyWorkflow]) -> list[AnyWorkflow]:
    seen: set[int] = set()
    out = []
    for wf in workflows:
        if id(wf) not in seen:
            seen.add(id(wf))
            out.append(wf)
    return out


def pick_workflow(workflows: list[AnyWorkflow], name: str | None, target: Target) -> AnyWorkflow:
    """The one workflow a command acts on (``--workflow NAME`` when the target has several)."""
    names = ", ".join(repr(wf.name) for wf in workflows)
    if name is not None:
        for wf in workflows:
            if wf.name == name:
                return wf
        raise CliError(
            EXIT_USAGE, f"target {target.text!r} has no workflow {name!r} (it has: {names})"
        )
    if len(workflows) == 1:
        return workflows[0]
    raise CliError(
        EXIT_USAGE,
        f"target {target.text!r} has {len(workflows)} workflows ({names}): "
        "choose one with --workflow NAME",
    )
