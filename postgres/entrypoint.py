"""Initialise the cluster on first start, then run PostgreSQL in the foreground.

First start (empty data volume): initdb with the superuser password from the
environment (via a file, never the command line), then one role and one
database each for the catalog and for tabular storage. Neither role can
connect to the other's database. Later starts only size max_connections.

The first start is all or nothing. The cluster is made in a staging directory
on the same volume and moved into PGDATA only once its roles and databases
exist, PG_VERSION last: a cluster with PG_VERSION is a finished one. A first
start that stopped part-way (a crash, a kill, a full disk) leaves the staging
directory behind; the next start removes what it left and begins again.
"""

import os
import subprocess
import sys
import tempfile

PGDATA = os.environ["PGDATA"]
# Inside PGDATA, the volume's mount point, so that rename() moves files without copying.
STAGING = os.path.join(PGDATA, ".first-start")
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
    os.mkdir(STAGING, 0o700)
    with tempfile.NamedTemporaryFile("w", delete=False) as pwfile:
        pwfile.write(os.environ["POSTGRES_PASSWORD"])
    try:
        subprocess.run(
            ["initdb", "--username=postgres", f"--pwfile={pwfile.name}",
             "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8",
             "--locale=C.UTF-8", f"--pgdata={STAGING}"],
            check=True, stdout=subprocess.DEVNULL,
        )
    finally:
        os.unlink(pwfile.name)
    with open(os.path.join(STAGING, "pg_hba.conf"), "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    # Listen on the socket only while setting up: the healthcheck (TCP) stays red.
    # The server's own log stays in the container's: pg_ctl's "Examine the log output" points there.
    subprocess.run(["pg_ctl", "-D", STAGING, "-o", "-c listen_addresses=''", "-w", "start"], check=True)
    statements = []
    for name, env in (("tiled_catalog", "CATALOG_DB_PASSWORD"), ("tiled_storage", "STORAGE_DB_PASSWORD")):
        password = quote_literal(os.environ[env])
        statements += [
            f"CREATE ROLE {name} LOGIN PASSWORD {password};",
            f"CREATE DATABASE {name} OWNER {name};",
            f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;",
        ]
    print("▶ creating roles and databases tiled_catalog and tiled_storage", flush=True)
    psql("\n".join(statements))
    subprocess.run(["pg_ctl", "-D", STAGING, "-m", "fast", "-w", "stop"], check=True,
                   stdout=subprocess.DEVNULL)
    move_into_place()
    print("✓ databases tiled_catalog and tiled_storage created, each with its own role", flush=True)


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place() -> None:
    """Move the finished cluster from STAGING into PGDATA, PG_VERSION last."""
    # PostgreSQL refuses a data directory others can read; initdb set this on STAGING only.
    os.chmod(PGDATA, 0o700)
    names = sorted(os.listdir(STAGING), key=lambda name: name == "PG_VERSION")
    for name in names:
        if name == "PG_VERSION":
            # The renames before it reach the disk first, or a power cut could keep
            # PG_VERSION and lose a directory it vouches for.
            fsync_directory(PGDATA)
        os.rename(os.path.join(STAGING, name), os.path.join(PGDATA, name))
    fsync_directory(PGDATA)
    os.rmdir(STAGING)


def remove_tree(path: str) -> None:
    # No shutil: the image has python3-minimal, whose standard library lacks it.
    for parent, directories, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(parent, name))
        for name in directories:
            child = os.path.join(parent, name)
            if os.path.islink(child):
                os.unlink(child)
            else:
                os.rmdir(child)
    os.rmdir(path)


def clear_unfinished_first_start() -> None:
    """Remove what a first start that stopped part-way left in PGDATA; refuse anything else."""
    names = os.listdir(PGDATA)
    if not names:
        return
    if os.path.basename(STAGING) not in names:
        sys.exit(f"postgres: {PGDATA} holds files but no PostgreSQL cluster (no PG_VERSION), and this "
                 "image did not put them there; give the service an empty volume, or move the files away")
    print("▶ removing a cluster that an earlier first start left unfinished", flush=True)
    # STAGING goes last: while it exists, the next start knows the rest is ours to remove.
    for name in sorted(names, key=lambda name: name == os.path.basename(STAGING)):
        path = os.path.join(PGDATA, name)
        if os.path.isdir(path) and not os.path.islink(path):
            remove_tree(path)
        else:
            os.unlink(path)


def main() -> None:
    for env in ("POSTGRES_PASSWORD", "CATALOG_DB_PASSWORD", "STORAGE_DB_PASSWORD"):
        if not os.environ.get(env):
            sys.exit(f"postgres: {env} is empty; set it in .env (make up generates it)")
    if os.path.exists(os.path.join(PGDATA, "PG_VERSION")):
        if os.path.isdir(STAGING):
            os.rmdir(STAGING)  # the last step of a first start, cut short after PG_VERSION moved
    else:
        clear_unfinished_first_start()
        try:
            initialise()
        except subprocess.CalledProcessError as err:
            sys.exit(f"postgres: the first start failed at `{err.cmd[0]}` (exit {err.returncode}; its output is "
                     "above); the next start begins again from scratch: fix the cause, then `make up`")
    connections = max_connections()
    print(f"▶ starting PostgreSQL with max_connections={connections}", flush=True)
    os.execvp("postgres", ["postgres", "-D", PGDATA, "-c", "listen_addresses=*",
                           "-c", f"max_connections={connections}"])


if __name__ == "__main__":
    main()
