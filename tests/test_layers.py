"""The package's shape: the import layers (``lint-imports``, run by ``make lint``) and the size
of its modules."""

from __future__ import annotations

from pathlib import Path

import statestream

#: "No module over ~600 lines": a module past this wants splitting by concept.
MAX_LINES = 650


def test_no_module_is_over_the_size_limit() -> None:
    root = Path(statestream.__file__).parent
    sizes = {
        str(path.relative_to(root)): len(path.read_text(encoding="utf-8").splitlines())
        for path in root.rglob("*.py")
    }
    assert sizes, "no modules found"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
