"""How the SQLite adapters report driver errors: what failed, on which file, what to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ...errors import AdapterError, InvalidInput

__all__ = ["stopped_error", "translate"]


def _unencodable(exc: UnicodeEncodeError) -> InvalidInput:
    """SQLite stores text as UTF-8, which has no lone surrogates (``"\\ud800"``): such a value
    is refused with a message that shows it, rather than stored altered."""
    text = exc.object if isinstance(exc.object, str) else str(exc.object)
    shown = text if len(text) <= 80 else text[:77] + "..."
    error = InvalidInput(
        f"the text {shown!r} contains a lone surrogate ({text[exc.start : exc.start + 1]!r} at "
        f"index {exc.start}), which is not valid Unicode: SQLite keeps text as UTF-8, which "
        "cannot encode it; pass valid text"
    )
    error.__cause__ = exc
    return error


def stopped_error(path: Path, cause: BaseException) -> AdapterError:
    """What a caller gets once the database thread stopped on an unexpected error."""
    error = AdapterError(
        f"the SQLite thread for {path} stopped on an unexpected error ({cause!r}) before "
        "confirming this operation, whose write (if any) was rolled back; close() the "
        "SqliteDatabase to open the file again"
    )
    error.__cause__ = cause
    return error


def translate(exc: BaseException, path: Path) -> BaseException:
    """Driver errors become AdapterErrors that name the file and what to do; a text value the
    driver cannot encode becomes InvalidInput; others pass."""
    if isinstance(exc, UnicodeEncodeError):
        return _unencodable(exc)
    if not isinstance(exc, sqlite3.Error):
        return exc
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        hint = "it is not an SQLite database (or is encrypted): choose another path"
    elif "malformed" in text or "corrupt" in text:
        hint = "the file is corrupted: restore it from a backup, or run sqlite3's .recover"
    elif "locked" in text or "busy" in text:
        hint = "another process holds the write lock longer than busy_timeout: retry later"
    elif "disk is full" in text or "database or disk is full" in text:
        hint = "the disk is full: free space; the transaction was rolled back"
    elif "readonly" in text or "read-only" in text:
        hint = "the file or its directory is read-only: fix permissions"
    elif "unable to open" in text:
        hint = "check that the path exists and is writable"
    else:
        hint = "see the SQLite error above"
    error = AdapterError(f"SQLite error on {path}: {text} ({hint})")
    error.__cause__ = exc
    return error
