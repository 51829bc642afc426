"""One-shot job: create the catalog schema if absent, then upgrade it if old.

Runs once before any replica starts (compose: service_completed_successfully),
because concurrent `init --if-not-exists` runs race and the losers crash.
Tiled's `tiled catalog init` / `upgrade-database` commands are called
in-process, so the database password never appears on a command line.
"""

import os
import sys

import click
from tiled.commandline._catalog import init, upgrade_database


def catalog_uri() -> str:
    password = os.environ["CATALOG_DB_PASSWORD"]
    return f"postgresql://tiled_catalog:{password}@postgres:5432/tiled_catalog"


def run(step: str, command, *args, **kwargs) -> None:
    print(f"▶ {step}", flush=True)
    try:
        command(*args, **kwargs)
    except (click.exceptions.Abort, click.exceptions.Exit, SystemExit) as err:
        print(f"✗ {step} failed ({err!r}); see the output above", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> None:
    uri = catalog_uri()
    run("creating the catalog schema if it does not exist", init, database=uri, if_not_exists=True)
    run("upgrading the catalog schema if it is older than this Tiled", upgrade_database, uri, None)
    print("✓ catalog ready", flush=True)


if __name__ == "__main__":
    main()
