"""``statestream web TARGET``: serve the web UI (:mod:`statestream.web`) with uvicorn."""

from __future__ import annotations

from types import SimpleNamespace as Args

from ..errors import ConfigurationError
from .output import echo
from .target import EXIT_OK, EXIT_USAGE, AnyWorkflow, CliError, dedupe, load_workflows

__all__ = ["cmd_web"]


async def cmd_web(args: Args) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(EXIT_USAGE, f"--port must be from 0 to 65535, got {args.port}")
    try:
        import uvicorn

        from ..web import create_app
    except ImportError as exc:
        raise CliError(
            EXIT_USAGE, f"the web UI needs its extra: pip install 'statestream[web]' ({exc})"
        ) from exc
    except ConfigurationError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from exc
    workflows: list[AnyWorkflow] = []
    for target in args.targets:
        workflows.extend(await load_workflows(target))
    try:
        app = create_app(dedupe(workflows), open_reads=args.open_reads, title=args.title)
    except ConfigurationError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from exc
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, server_header=False
    )
    server = uvicorn.Server(config)
    names = ", ".join(wf.name for wf in workflows)
    echo(f"statestream web: {names} on http://{args.host}:{args.port}/ (Ctrl+C stops)")
    await server.serve()
    return EXIT_OK
