"""Initialise the cluster on first start, then run PostgreSQL in the foreground.

First start (empty data volume): initdb with the superuser password from the
environment (via a file, never the command line), then one role and one
database each for the catalog and for tabular storage. Neither role can
connect to the other's database. Later starts only size max_connections.
"""

import os
import subprocess
import sys
import tempfile

PGDATA = os.environ["PGDATA"]
HEADROOM = 20  # tiled-init, backups, psql sessions, superuser_reserved_connections


def max_connections() -> int:
    """Enough for TILED_MAX_REPLICAS replicas at full pool + overflow (compose.yaml x-pools)."""
    per_replica = sum(
        int(os.environ[name])
        for name in (
            "TILED_CATALOG_POOL_SIZE", "TILED_CATALOG_MAX_OVERFLOW",
            "TILED_STORAGE_POOL_SIZE", "TILED_STORAGE_MAX_OVERFLOW",
        )
    )
    return int(os.environ["TILED_MAX_REPLICAS"]) * per_replica + HEADROOM


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def psql(sql: str) -> None:
    # Passed on stdin so passwords never reach a command line.
    subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-q", "--username=postgres", "--dbname=postgres"],
        input=sql, text=True, check=True,
    )


def initialise() -> None:
    print("▶ initialising a new PostgreSQL cluster", flush=True)
    with tempfile.NamedTemporaryFile("w", delete=False) as pwfile:
        pwfile.write(os.environ["POSTGRES_PASSWORD"])
    try:
        subprocess.run(
            ["initdb", "--username=postgres", f"--pwfile={pwfile.name}",
             "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8",
             "--locale=C.UTF-8", f"--pgdata={PGDATA}"],
            check=True, stdout=subprocess.DEVNULL,
        )
    finally:
        os.unlink(pwfile.name)
    with open(os.path.join(PGDATA, "pg_hba.conf"), "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    # Listen on the socket only while setting up: the healthcheck (TCP) stays red.
    subprocess.run(["pg_ctl", "-D", PGDATA, "-o", "-c listen_addresses=''", "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    statements = []
    for name, env in (("tiled_catalog", "CATALOG_DB_PASSWORD"), ("tiled_storage", "STORAGE_DB_PASSWORD")):
        password = quote_literal(os.environ[env])
        statements += [
            f"CREATE ROLE {name} LOGIN PASSWORD {password};",
            f"CREATE DATABASE {name} OWNER {name};",
            f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;",
        ]
    psql("\n".join(statements))
    subprocess.run(["pg_ctl", "-D", PGDATA, "-m", "fast", "-w", "stop"], check=True,
                   stdout=subprocess.DEVNULL)
    print("✓ databases tiled_catalog and tiled_storage created, each with its own role", flush=True)


def main() -> None:
    for env in ("POSTGRES_PASSWORD", "CATALOG_DB_PASSWORD", "STORAGE_DB_PASSWORD"):
        if not os.environ.get(env):
            sys.exit(f"postgres: {env} is empty; set it in .env (make up generates it)")
    if not os.path.exists(os.path.join(PGDATA, "PG_VERSION")):
        initialise()
    connections = max_connections()
    print(f"▶ starting PostgreSQL with max_connections={connections}", flush=True)
    os.execvp("postgres", ["postgres", "-D", PGDATA, "-c", "listen_addresses=*",
                           "-c", f"max_connections={connections}"])


if __name__ == "__main__":
    main()
