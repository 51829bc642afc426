"""Live tier: PostgreSQL's first start is all or nothing.

The postgres image (with this checkout's entry point) is run on a fresh volume and its
first start is made to fail for real after it began making the cluster; the next start
on the same volume must then create every role and database, each role reaching its
own database only. A cluster from before tiled_authn gets it on its next start. No
stack, no Compose: one container at a time, as Docker runs it.
"""

import secrets
import shutil
import time
from pathlib import Path

import docker.errors
import psycopg
import pytest

from scripts.lib.docker_api import client

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
PGDATA = "/var/lib/postgresql/data"
ROLES = ("tiled_catalog", "tiled_storage", "tiled_authn")
STARTED = "initialising a new PostgreSQL cluster"
FINISHED = "databases tiled_catalog, tiled_storage, tiled_authn created"


@pytest.fixture(scope="module")
def postgres_image(images, tmp_path_factory):
    """The built postgres image with this checkout's entry point, whichever checkout built
    tiled-stack/postgres:15 last (another worktree's `make images` may have)."""
    tag = f"tiled-stack/postgres-first-start-test:{secrets.token_hex(4)}"
    context = tmp_path_factory.mktemp("postgres-image")
    shutil.copy(ROOT / "postgres" / "entrypoint.py", context / "entrypoint.py")
    (context / "Dockerfile").write_text("FROM tiled-stack/postgres:15\n"
                                        "COPY entrypoint.py /usr/local/bin/postgres-entrypoint\n")
    client().images.build(path=str(context), tag=tag, rm=True)
    yield tag
    client().images.remove(tag)


def environment() -> dict:
    return {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "CATALOG_DB_PASSWORD": secrets.token_hex(16),
        "STORAGE_DB_PASSWORD": secrets.token_hex(16),
        "AUTHN_DB_PASSWORD": secrets.token_hex(16),
        "TILED_MAX_REPLICAS": "2",
        "TILED_CATALOG_POOL_SIZE": "2", "TILED_CATALOG_MAX_OVERFLOW": "2",
        "TILED_STORAGE_POOL_SIZE": "2", "TILED_STORAGE_MAX_OVERFLOW": "2",
        "TILED_AUTHN_POOL_SIZE": "2", "TILED_AUTHN_MAX_OVERFLOW": "2",
    }


def logs(container) -> str:
    return container.logs().decode(errors="replace")


def wait_for_log(container, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in logs(container):
        container.reload()
        assert container.status == "running", f"exited before logging {text!r}:\n{logs(container)}"
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{logs(container)}"
        time.sleep(0.02)


def fail_with_a_read_only_socket_directory(run):
    """initdb needs no socket; the setup server started after it does, and cannot make one."""
    first = run(tmpfs={"/run/postgresql": "ro"})
    first.wait(timeout=120)
    assert "pg_ctl: could not start server" in logs(first), logs(first)
    return first


def kill_during_initdb(run):
    """SIGKILL to the whole container half a second into the first start (initdb takes seconds)."""
    first = run()
    wait_for_log(first, STARTED)
    time.sleep(0.5)
    first.kill()
    first.wait(timeout=60)
    return first


@pytest.mark.parametrize("cut_short", [fail_with_a_read_only_socket_directory, kill_during_initdb],
                         ids=["setup-server-cannot-start", "killed-during-initdb"])
def test_a_first_start_cut_short_is_made_again_in_full_on_the_next(postgres_image, cut_short):
    env = environment()
    volume = client().volumes.create(f"tiledtest-pgfirst-{secrets.token_hex(4)}")
    containers = []

    def run(**options):
        container = client().containers.run(postgres_image, detach=True, environment=env,
                                            volumes={volume.name: {"bind": PGDATA, "mode": "rw"}}, **options)
        containers.append(container)
        return container

    try:
        first = cut_short(run)
        first.reload()
        assert first.attrs["State"]["ExitCode"] != 0, logs(first)
        assert STARTED in logs(first) and FINISHED not in logs(first), (
            f"the first start was not cut short part-way:\n{logs(first)}")

        second = run()
        wait_for_ready(second)
        each_role_reaches_its_own_database_only(second, env)

        # A cluster made before tiled_authn existed (no database, no role, no mark): the
        # next start adds them, once.
        for sql in ("DROP DATABASE tiled_authn", "DROP ROLE tiled_authn"):
            assert second.exec_run(["psql", "-U", "postgres", "-c", sql], user="postgres").exit_code == 0
        assert second.exec_run(["rm", f"{PGDATA}/.tiled-authn"], user="postgres").exit_code == 0
        second.restart(timeout=30)
        wait_for_ready(second)
        assert "predates database tiled_authn" in logs(second)
        each_role_reaches_its_own_database_only(second, env)
    finally:
        for container in containers:
            print(f"===== {container.name} =====\n{logs(container)}")
            container.remove(force=True)
        volume.remove(force=True)


def each_role_reaches_its_own_database_only(container, env: dict) -> None:
    container.reload()
    address = container.attrs["NetworkSettings"]["IPAddress"]
    for role in ROLES:
        password = env[f"{role.removeprefix('tiled_').upper()}_DB_PASSWORD"]
        with psycopg.connect(host=address, user=role, password=password, dbname=role, connect_timeout=10) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == (role, role)
        for other in set(ROLES) - {role}:
            with pytest.raises(psycopg.OperationalError, match=f'permission denied for database "{other}"'):
                psycopg.connect(host=address, user=role, password=password, dbname=other, connect_timeout=10)


def wait_for_ready(container, timeout: float = 120) -> None:
    """pg_isready over TCP, as compose.yaml's healthcheck asks: the setup server listens on
    the socket only, so this answers once the real server is up."""
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        assert container.status == "running", f"the next start failed:\n{logs(container)}"
        try:
            done = container.exec_run(["pg_isready", "--host=127.0.0.1", "--username=postgres",
                                       "--dbname=postgres"])
            if done.exit_code == 0:
                return
        except docker.errors.APIError:  # exited between reload() and exec
            pass
        assert time.monotonic() < deadline, f"not ready within {timeout}s:\n{logs(container)}"
        time.sleep(0.5)
