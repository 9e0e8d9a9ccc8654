"""The ``statestream`` command line: run workers, inspect and control runs, manage SQLite files.

Commands (``statestream COMMAND --help`` for each)::

    statestream worker TARGET [TARGET ...] [--grace S] [--log-level LEVEL]
                       [--log-format text|json] [--metrics-port PORT]
    statestream runs list TARGET [--status NAME] [--state NAME] [--foreign-id ID]
                                 [--limit N] [--offset N] [--desc] [--json]
    statestream runs show TARGET RUN_ID [--json]
    statestream runs pause|cancel|delete TARGET RUN_ID [REASON | --reason TEXT] [--json]
    statestream runs resume TARGET RUN_ID [--json]
    statestream runs parked TARGET [--consumer NAME] [--limit N] [--json]
    statestream runs retry-parked TARGET PARKED_ID [--json]
    statestream top TARGET [--interval S] [--once] [--max-runs N]
    statestream graph TARGET [--direction LR|RL|TB|BT]
    statestream web TARGET [TARGET ...] [--host H] [--port N] [--open-reads]
    statestream schema create|migrate PATH [--allow-foreign]
    statestream schema version PATH
    statestream db migrate|version --url URL [--prefix PREFIX]
    statestream demo [--orders N] [--payment-window S] [--db PATH | --memory]
    statestream --version

``TARGET`` is ``module:attribute`` (``myapp.workflows:orders``), imported with the current
directory on ``sys.path``. The attribute is a :class:`~statestream.Workflow`, a list of them, or a
zero-argument callable (sync or async) returning either. Commands that act on one workflow take
``--workflow NAME`` to choose among several.

Exit codes, for scripts:

    0  success
    1  the operation failed (an invalid run-state transition, a concurrent change, an error
       in the workflow's code)
    2  usage error (bad arguments, unknown status name, several workflows and no --workflow)
    3  not found (no such run, a run of another workflow, a missing database file)
    4  the target cannot be loaded (import error, missing attribute, not a Workflow)
    5  backend error (the store failed: unreachable, corrupt or foreign database, newer schema)
    130  interrupted (Ctrl+C outside the worker)

Errors are one line on stderr, ``statestream: error: ...``; ``--debug`` adds the traceback. A
usage error prints the help of the command it is about, then that line. Output is coloured only
on a terminal and when ``NO_COLOR`` is not set.

The commands are Typer's, their output Rich's: both come with the ``cli`` extra
(``pip install 'statestream[cli]'``, part of ``all``); without them ``statestream`` says so and
exits with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .target import (
    EXIT_BACKEND,
    EXIT_FAILED,
    EXIT_LOAD,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_BACKEND",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOAD",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_INTERRUPTED = 130

INSTALL_HINT = (
    "statestream: error: the command line needs its extra: pip install 'statestream[cli]' ({})"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    The console script calls ``sys.exit(main())``.
    """
    try:
        from .run import run
    except ImportError as exc:
        if exc.name not in ("typer", "click", "rich") and not str(exc.name).startswith(
            ("typer.", "click.", "rich.")
        ):
            raise
        print(INSTALL_HINT.format(f"no module named {exc.name!r}"), file=sys.stderr, flush=True)
        return EXIT_USAGE
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
