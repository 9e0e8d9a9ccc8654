"""The Click that Typer runs on: its vendored copy (newer Typer) or the ``click`` package."""

from __future__ import annotations

import importlib
from typing import Any

import typer

__all__ = ["ABORT", "EXIT", "ClickException", "UsageError", "current_context"]

try:
    _exceptions: Any = importlib.import_module("typer._click.exceptions")
    _globals: Any = importlib.import_module("typer._click.globals")
except ImportError:  # Typer on the click package
    _exceptions = importlib.import_module("click.exceptions")
    _globals = importlib.import_module("click.globals")

UsageError: Any = _exceptions.UsageError
ClickException: Any = _exceptions.ClickException
EXIT: tuple[type[BaseException], ...] = (typer.Exit, getattr(_exceptions, "Exit", typer.Exit))
ABORT: tuple[type[BaseException], ...] = (typer.Abort, getattr(_exceptions, "Abort", typer.Abort))


def current_context() -> Any:
    return _globals.get_current_context()
