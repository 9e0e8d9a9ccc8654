"""The public surface: ``__all__`` lists exactly the public names, all importable (httpx style)."""

from __future__ import annotations

import importlib
import types

import pytest

import statestream
from statestream import errors

#: Subpackages users import by path; they appear in ``vars(statestream)`` once anything (another
#: test, for instance) imports them, and are not part of ``__all__``.
IMPORTED_BY_PATH = {
    "adapters",
    "adaptertest",
    "cli",
    "demo",
    "logs",
    "metrics",
    "testing",
    "tracing",
    "web",
}


def public_names(module: types.ModuleType, *, keep: tuple[str, ...] = ()) -> list[str]:
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") and name not in keep:
            continue
        if type(value).__module__ == "__future__":  # from __future__ import annotations
            continue
        names.append(name)
    return names


def test_all_lists_every_public_member_sorted() -> None:
    names = public_names(statestream, keep=("__version__",))
    names = [n for n in names if n not in IMPORTED_BY_PATH]
    assert statestream.__all__ == sorted(names)


def test_subpackages_imported_by_path_are_not_in_all() -> None:
    assert IMPORTED_BY_PATH.isdisjoint(statestream.__all__)


@pytest.mark.parametrize("name", statestream.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from statestream import {name}", namespace)
    assert namespace[name] is getattr(statestream, name)


def test_errors_all_lists_every_public_member_sorted() -> None:
    assert errors.__all__ == sorted(public_names(errors))


@pytest.mark.parametrize("name", errors.__all__)
def test_every_name_in_errors_all_is_importable(name: str) -> None:
    module = importlib.import_module("statestream.errors")
    namespace: dict[str, object] = {}
    exec(f"from statestream.errors import {name}", namespace)
    assert namespace[name] is getattr(module, name)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_workflow_error(name: str) -> None:
    cls = getattr(errors, name)
    assert isinstance(cls, type)
    assert issubclass(cls, errors.WorkflowError)
    assert cls.__module__ == "statestream.errors"


def test_every_exception_class_in_errors_is_exported() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == set(errors.__all__)


def test_errors_reexported_at_the_top_are_the_same_classes() -> None:
    for name in statestream.__all__:
        value = getattr(statestream, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value is getattr(errors, name)


def test_python_exception_bases_where_documented() -> None:
    assert issubclass(errors.WaitTimeout, TimeoutError)
    assert issubclass(errors.InvalidInput, ValueError)
    assert issubclass(errors.InvalidObject, TypeError)
    assert issubclass(errors.RecordNotFound, LookupError)
    assert issubclass(errors.AdapterConnectionError, ConnectionError)
    assert issubclass(errors.UnknownStatus, errors.InvalidInput)
    assert issubclass(errors.CodecError, errors.AdapterError)
