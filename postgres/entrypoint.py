"""Initialise the cluster on first start, then run PostgreSQL in the foreground.

First start (empty data volume): initdb with the superuser password from the
environment (via a file, never the command line), then one role and one
database each for the catalog, for tabular storage and for authentication
(users' sessions, principals, API keys). No role can connect to another's
database. Later starts size max_connections, and add a database a cluster made
by an older version of this image lacks (tiled_authn), once.

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


def secrets_into_environment() -> None:
    """On Docker Swarm the secrets arrive as files, /run/secrets/<VARIABLE> (compose.swarm.yaml)."""
    folder = "/run/secrets"
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                os.environ.setdefault(name, f.read())


def max_connections() -> int:
    """Enough for TILED_MAX_REPLICAS replicas at full pool + overflow (compose.yaml x-pools)."""
    per_replica = sum(
        int(os.environ[name])
        for name in (
            "TILED_CATALOG_POOL_SIZE", "TILED_CATALOG_MAX_OVERFLOW",
            "TILED_STORAGE_POOL_SIZE", "TILED_STORAGE_MAX_OVERFLOW",
            "TILED_AUTHN_POOL_SIZE", "TILED_AUTHN_MAX_OVERFLOW",
        )
    )
    return int(os.environ["TILED_MAX_REPLICAS"]) * per_replica + HEADROOM


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Each database with the role that owns it (of the same name) and that role's password.
DATABASES = {"tiled_catalog": "CATALOG_DB_PASSWORD", "tiled_storage": "STORAGE_DB_PASSWORD",
             "tiled_authn": "AUTHN_DB_PASSWORD"}


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
    print(f"▶ creating roles and databases {', '.join(DATABASES)}", flush=True)
    psql("\n".join(create_database(name) for name in DATABASES))
    subprocess.run(["pg_ctl", "-D", STAGING, "-m", "fast", "-w", "stop"], check=True,
                   stdout=subprocess.DEVNULL)
    move_into_place()
    with open(os.path.join(PGDATA, ADDED_MARK), "w"):
        pass
    print(f"✓ databases {', '.join(DATABASES)} created, each with its own role", flush=True)


def create_database(name: str) -> str:
    password = quote_literal(os.environ[DATABASES[name]])
    return (f"CREATE ROLE {name} LOGIN PASSWORD {password};\n"
            f"CREATE DATABASE {name} OWNER {name};\n"
            f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;")


# Marks a cluster that has every database in DATABASES (made by this image, or completed once).
ADDED_MARK = ".tiled-authn"


def add_missing_databases() -> None:
    """A cluster from before tiled_authn existed gets it on its first start with this image.

    The server listens on its socket only meanwhile (the healthcheck stays red), and the
    mark is written only once the database exists: an interrupted run is run again."""
    if os.path.exists(os.path.join(PGDATA, ADDED_MARK)):
        return
    subprocess.run(["pg_ctl", "-D", PGDATA, "-o", "-c listen_addresses=''", "-w", "start"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        found = subprocess.run(["psql", "-qtA", "--username=postgres", "--dbname=postgres", "-c",
                                "SELECT datname FROM pg_database"], capture_output=True, text=True, check=True)
        missing = [name for name in DATABASES if name not in found.stdout.split()]
        for name in missing:
            print(f"▶ this cluster predates database {name}: creating it with its own role", flush=True)
            role = subprocess.run(["psql", "-qtA", "--username=postgres", "--dbname=postgres", "-c",
                                   f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'"],
                                  capture_output=True, text=True, check=True)
            sql = create_database(name)
            if role.stdout.strip():  # a run cut short between the two statements
                sql = sql.split("\n", 1)[1]
            psql(sql)
    finally:
        subprocess.run(["pg_ctl", "-D", PGDATA, "-m", "fast", "-w", "stop"], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(PGDATA, ADDED_MARK), "w"):
        pass


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
    for env in ("POSTGRES_PASSWORD", *DATABASES.values()):
        if not os.environ.get(env):
            sys.exit(f"postgres: {env} is empty; set it in .env (make up generates it)")
    if os.path.exists(os.path.join(PGDATA, "PG_VERSION")):
        if os.path.isdir(STAGING):
            os.rmdir(STAGING)  # the last step of a first start, cut short after PG_VERSION moved
        try:
            add_missing_databases()
        except subprocess.CalledProcessError as err:
            sys.exit(f"postgres: adding a missing database failed at `{err.cmd[0]}` (exit {err.returncode}; "
                     "its output is above); the next start tries again")
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
    secrets_into_environment()
    main()
