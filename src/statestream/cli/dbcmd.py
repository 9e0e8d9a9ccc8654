"""``statestream db migrate|version --url URL``: the schema of a database named by URL."""

from __future__ import annotations

from types import SimpleNamespace as Args

from .output import echo
from .target import EXIT_OK

__all__ = ["cmd_db"]


async def cmd_db(args: Args) -> int:
    from ..adapters.sql import SCHEMA_VERSION, migrate, schema_version

    url, prefix = args.url, args.prefix
    shown = url.split("@")[-1]
    if args.action == "version":
        found = await schema_version(url, prefix=prefix)
        echo(str(found))
        if found == 0:
            echo(
                f"statestream: note: {shown} has no statestream tables under prefix {prefix!r}; "
                "'statestream db migrate' creates them",
                err=True,
            )
        elif found < SCHEMA_VERSION and not url.startswith("sqlite:"):
            echo(
                f"statestream: note: older than this release's schema ({SCHEMA_VERSION}); "
                "'statestream db migrate' brings it up to date",
                err=True,
            )
        return EXIT_OK
    before, after = await migrate(url, prefix=prefix)
    if before == 0:
        echo(f"created the statestream schema version {after} on {shown}")
    elif before == after:
        echo(f"{shown} is at statestream schema version {after} (up to date)")
    else:
        echo(f"migrated {shown} from statestream schema version {before} to {after}")
    return EXIT_OK
