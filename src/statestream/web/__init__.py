"""A web UI for operators: list, inspect and control runs, see the graph and parked events.

``create_app(workflows, token=...)`` returns an ASGI application (Starlette) to mount in your
own app or to serve with ``statestream web TARGET``. It needs the ``web`` extra::

    pip install 'statestream[web]'
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from ..errors import ConfigurationError

    raise ConfigurationError("the web UI needs Starlette: pip install 'statestream[web]'") from exc

from ._app import create_app

__all__ = ["create_app"]
