"""``python -m statestream``: the command line (see :mod:`statestream.cli`)."""

from .cli import main

raise SystemExit(main())
