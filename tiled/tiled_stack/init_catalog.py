"""One-shot job: create the catalog and authentication schemas if absent, then upgrade them if old.

Runs once before any replica starts (compose: service_completed_successfully),
because concurrent `init --if-not-exists` runs race and the losers crash.
Tiled's `tiled catalog init` / `upgrade-database` commands are called
in-process, so the database password never appears on a command line.
"""

import asyncio
import os
import sys

import click
from tiled.commandline._admin import initialize_database as init_authn
from tiled.commandline._admin import upgrade_database as upgrade_authn
from tiled.commandline._catalog import init, upgrade_database

from tiled_stack import access, auth


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
    # Made in every mode, so that switching TILED_AUTH later needs no extra step.
    authn = auth.authn_database(os.environ)["uri"]
    if authn_revision(authn) is None:
        run("creating the authentication schema", init_authn, authn)
    else:
        run("upgrading the authentication schema if it is older than this Tiled", upgrade_authn, authn, None)
    print("✓ authentication database ready", flush=True)
    if auth.mode(os.environ) != "single-user":
        asyncio.run(make_admins(authn))
        print(f"▶ compiling the access tags of {access.TAGS_FILE}", flush=True)
        try:
            print(f"✓ {asyncio.run(access.compile_tags(os.environ))}", flush=True)
        except Exception as err:  # noqa: BLE001 - the replicas must start whatever the directory does
            # The tags compiled last stay in force (none: only admins see runs), so access
            # never widens; service accounts and logins go on working.
            print(f"✗ the access tags were not compiled ({type(err).__name__}: {err}); the last compiled "
                  "ones stay in force: fix it, then `make access`", file=sys.stderr, flush=True)


async def make_admins(uri: str) -> None:
    """TILED_ADMINS get the admin role here, once: replicas starting together would each
    create a new admin's principal and all but one crash on the duplicate."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from tiled.authn_database.core import make_admin_by_identity
    from tiled.utils import ensure_specified_sql_driver

    provider = auth.mode(os.environ)
    engine = create_async_engine(ensure_specified_sql_driver(uri))
    try:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            for name in auth.words(os.environ.get("TILED_ADMINS")):
                await make_admin_by_identity(db, provider, name)
                print(f"✓ {provider}:{name} has the admin role", flush=True)
    finally:
        await engine.dispose()


def authn_revision(uri: str) -> str | None:
    """The authentication schema's revision; None for a new database."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import get_current_revision
    from tiled.authn_database.core import ALL_REVISIONS
    from tiled.utils import ensure_specified_sql_driver

    async def read() -> str | None:
        engine = create_async_engine(ensure_specified_sql_driver(uri))
        try:
            return await get_current_revision(engine, ALL_REVISIONS)
        finally:
            await engine.dispose()

    return asyncio.run(read())


if __name__ == "__main__":
    main()
