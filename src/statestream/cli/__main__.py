"""``python -m statestream.cli``."""

from . import main

raise SystemExit(main())
