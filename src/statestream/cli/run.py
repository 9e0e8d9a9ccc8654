"""Running the ``statestream`` command: parsing, exit codes and the one-line errors."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import typer.main

from ..errors import (
    AdapterError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    VersionConflict,
    WorkflowError,
)
from .app import app
from .clicklib import ABORT, EXIT, ClickException, UsageError
from .output import console, styled
from .target import (
    EXIT_BACKEND,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)

__all__ = ["classify", "run"]

EXIT_INTERRUPTED = 130


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message of an error."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, InvalidTransition):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, RecordNotFound):
        return EXIT_NOT_FOUND, str(exc) or "not found"
    if isinstance(exc, AdapterError):
        return EXIT_BACKEND, str(exc)
    if isinstance(exc, VersionConflict):
        return EXIT_FAILED, f"{exc}; try again"
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, WorkflowError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def _error_line(message: str) -> None:
    console(err=True).print(styled("statestream: ", ("error:", "bold red"), " ", message))
    sys.stderr.flush()


def _report(exc: BaseException, debug: bool) -> int:
    code, message = classify(exc)
    first = message.splitlines()[0] if message else type(exc).__name__
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    elif code == EXIT_FAILED and not isinstance(exc, WorkflowError | CliError):
        first += " (--debug shows the traceback)"
    _error_line(first)
    return code


def _usage_error(exc: Any) -> int:
    """The help of the command the error is about (not the top-level one), then the error."""
    if exc.ctx is not None:
        print(exc.ctx.get_help(), file=sys.stderr)
        print(file=sys.stderr)
    _error_line(exc.format_message())
    return EXIT_USAGE


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` is accepted anywhere before ``--``: moved in front of the command."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--debug"]
    return head + argv[end:], len(head) != end


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit code."""
    argv, debug = _split_debug(argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=(["--debug"] if debug else []) + argv,
            prog_name="statestream",
            standalone_mode=False,
        )
    except UsageError as exc:
        return _usage_error(exc)
    except EXIT as exc:
        return int(getattr(exc, "exit_code", EXIT_OK))
    except ABORT:  # KeyboardInterrupt while a command ran
        print("statestream: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("statestream: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except ClickException as exc:
        _error_line(exc.format_message())
        return int(exc.exit_code)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except Exception as exc:
        return _report(exc, debug)
    return result if isinstance(result, int) else EXIT_OK


def _silence_stdout() -> None:
    """After the reader of stdout went away (``| head``): no second error when Python flushes."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
