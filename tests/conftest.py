"""Shared fixtures. The fast tier needs no running stack; the live tier owns one.

The live stack is its own Compose project (unique name, free ports, its own
.env in a temp dir), started with `make up` as a user would, torn down with
`down --volumes` always, with every service's logs dumped if a test failed.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import env_file  # noqa: E402
from scripts.lib.compose import Stack, compose_command  # noqa: E402


def pytest_collection_modifyitems(items):
    """Fast tier first (a broken config fails in seconds), then local processes, then Docker;
    within a tier, a test marked `last` (it cleans or restarts the shared stack) after the rest,
    whatever the files' names."""
    def order(item) -> tuple[int, bool]:
        tier = 2 if item.get_closest_marker("live") else 1 if item.get_closest_marker("local") else 0
        return tier, item.get_closest_marker("last") is not None

    items.sort(key=order)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env_path(tmp_path, monkeypatch) -> Path:
    """A .env of a test's own, not yet created, and a .state/ of its own (the fast tier's
    configuration tests): nothing touches the checkout's stack."""
    from scripts.lib import compose

    path = tmp_path / ".env"
    monkeypatch.setenv("STACK_ENV_FILE", str(path))
    monkeypatch.setattr(compose, "STATE", tmp_path / "state")
    return path


def make(target: str, env_path: Path, *args: str, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    """Run a make target against the test stack, as a user would; output is shown on failure."""
    env = {**os.environ, "STACK_ENV_FILE": str(env_path), **extra_env}
    done = subprocess.run(["make", target, *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(done.stdout)
    if check and done.returncode:
        raise AssertionError(f"make {target} failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
    return done


BROWSER_IMAGE = "tiled-stack/test-browser:bookworm"  # Debian's Chromium (tests/browser/)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Every image built (from nothing on a fresh machine): `make images`; beside it, once
    the base image exists, the tests' browser image (before any stack starts: not beside
    timed tests on 2 cores)."""
    from scripts import build_images
    from scripts.lib.docker_api import client

    log = tmp_path_factory.mktemp("images") / "make-images.log"
    with open(log, "w") as out:
        making = subprocess.Popen(["make", "images"], cwd=ROOT, text=True, stdout=out, stderr=subprocess.STDOUT)
    base = build_images.compose_builds()["haproxy"]["args"]["BASE_IMAGE"]  # the stack's base
    try:
        while making.poll() is None and not build_images.image_exists(base):
            time.sleep(1)
        if build_images.image_exists(base):
            build_images.ensure_image(BROWSER_IMAGE, ROOT / "tests" / "browser", {"BASE_IMAGE": base}, base,
                                      client().images.get(base).id)
    finally:
        making.wait()
    print(log.read_text())
    assert making.returncode == 0, f"make images failed:\n{log.read_text()[-6000:]}"
    return types.SimpleNamespace(browser=BROWSER_IMAGE)


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory) -> Path:
    """A private .env: unique project, free ports, 3 replicas, one readable detector dir.

    The throttle on failed authentications is lifted: the fuzz test sends thousands of
    wrong keys from this one address. test_front_door_live tests the throttle on a stack
    of its own, with the default limit."""
    folder = tmp_path_factory.mktemp("stack")
    detectors = folder / "detectors"
    detectors.mkdir()
    detectors.chmod(0o755)
    path = folder / ".env"
    path.write_text(
        f"COMPOSE_PROJECT_NAME=tiledtest{secrets.token_hex(3)}\n"
        f"TILED_REPLICAS=3\nTILED_MAX_REPLICAS=6\n"
        f"TILED_PORT={free_port()}\nHAPROXY_STATS_PORT={free_port()}\n"
        f"TILED_READABLE_STORAGE={detectors}\n"
        f"HAPROXY_AUTH_FAIL_LIMIT=1000000\n"
    )
    os.environ["STACK_ENV_FILE"] = str(path)  # for Stack() inside the test process
    return path


# pytest-docker drives teardown (`down --volumes`) through our compose invocation;
# bringing the stack up is `make up`, the user's command, in the `stack` fixture.
@pytest.fixture(scope="session")
def docker_compose_command(stack_env) -> str:
    return " ".join([*compose_command(), "--project-directory", str(ROOT), "--env-file", str(stack_env)])


@pytest.fixture(scope="session")
def docker_compose_file(stack_env) -> list[str]:
    return [str(f) for f in Stack().files()]


@pytest.fixture(scope="session")
def docker_compose_project_name(stack_env) -> str:
    return Stack().project


@pytest.fixture(scope="session")
def docker_setup():
    return False


@pytest.fixture(scope="session")
def docker_cleanup():
    # Every profile: the monitoring test turns its profile on, and off again, on this stack.
    return ["--profile monitoring down --volumes --remove-orphans --timeout 20"]


@pytest.fixture(scope="session")
def stack(request, images, stack_env, docker_services) -> Stack:
    """The live stack, up and healthy. Logs of every service are dumped if any test failed."""
    from scripts.lib.docker_api import client

    client()  # no Docker → a clear error here, never a skip
    try:
        make("up", stack_env)
        yield Stack()
    finally:
        from scripts.lib import side_replica

        side_replica.remove(Stack().project)  # else `down` cannot remove the network
        if request.session.testsfailed:
            done = subprocess.run(Stack().args("logs", "--no-color", "--tail=150"),
                                  cwd=ROOT, text=True, capture_output=True)
            print("\n===== logs of every service (a test failed) =====\n" + done.stdout[-60000:])


@pytest.fixture(scope="session")
def values(stack):
    return env_file.parse(stack.env_path.read_text())


@pytest.fixture(scope="session")
def api_key(values):
    return values["TILED_SINGLE_USER_API_KEY"]


@pytest.fixture(scope="session")
def tiled(stack, api_key):
    from tiled.client import from_uri

    return from_uri(stack.local_url, api_key=api_key)


UPSTREAM_SITE = ROOT / ".venv" / "upstream"  # tiled, fastapi, strawberry as released (scripts/ensure_venv.py)


@pytest.fixture(scope="session")
def site_without(tmp_path_factory):
    """`site_without(PATCH)`: a copy of the released packages with the whole series but PATCH
    applied (as `apply.py --without PATCH` does in the image's build stage), for a probe."""
    made = {}

    def build(patch: str) -> Path:
        if patch not in made:
            site = tmp_path_factory.mktemp(f"without-{patch[:4]}")
            for package in UPSTREAM_SITE.iterdir():
                shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
            done = subprocess.run([sys.executable, str(ROOT / "tiled/patches/apply.py"), str(site), "--without", patch],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            made[patch] = site
        return made[patch]

    return build


def probe_tiled_stack(code: str, upstream: bool = False, site: Path | None = None) -> dict:
    """Run `code` in a fresh interpreter of the venv, with tiled/ (the image's tiled_stack)
    as sys.argv[1]; return the JSON object it prints last. The venv's Tiled, FastAPI and
    strawberry carry the upstream-fix series, as the image's do; `upstream=True` puts
    the released packages (.venv/upstream) first on the path instead, `site=` another
    copy (site_without)."""
    import json

    assert (UPSTREAM_SITE / "tiled").is_dir(), "no .venv/upstream/: run `make venv`"
    first = UPSTREAM_SITE if upstream else site
    env = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": str(first)} if first else {})}
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "tiled")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "tiled" in out:  # where Tiled was imported from: the probe ran what it claims
        assert out["tiled"].startswith(str(first)) if first else ".venv/lib" in out["tiled"], out["tiled"]
    return out


def probe_pair(code: str, released: Path | None = None) -> tuple[dict, dict]:
    """`code` run as released (or in the site `released`) and as patched, both at once
    (two interpreters: the fast tier's time is mostly their imports)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        before = pool.submit(probe_tiled_stack, code, released is None, released)
        after = pool.submit(probe_tiled_stack, code)
        return before.result(), after.result()


# Source for a probe: `sqlite_app(folder=None, **tree_args)` builds Tiled's app on an SQLite
# catalog in `folder` (a new temporary one by default), single-user API key "k".
SQLITE_APP = r"""
def sqlite_app(folder=None, **tree_args):
    import tempfile
    import tiled.server.app as tiled_app
    d = folder or tempfile.mkdtemp()
    args = {"uri": f"sqlite:///{d}/c.db", "init_if_not_exists": True, "writable_storage": [f"file://{d}/data"],
            **tree_args}
    return tiled_app.build_app_from_config({"authentication": {"single_user_api_key": "k"},
                                            "trees": [{"path": "/", "tree": "catalog", "args": args}]})
"""


def container_addresses(stack, service):
    """Address on the stack's backend network → container, for reaching behind HAProxy."""
    from scripts.lib.docker_api import backend_address, project_containers

    return {backend_address(c): c for c in project_containers(stack.project, service, all=False)}


def storage_dsn(stack, values) -> str:
    """The tiled_storage database, as its own role, at the stack's PostgreSQL."""
    (address,) = container_addresses(stack, "postgres")
    return f"postgresql://tiled_storage:{values['STORAGE_DB_PASSWORD']}@{address}:5432/tiled_storage"


def rows_in_storage(stack, values, node, columns: str) -> list[tuple]:
    """The rows of an appendable table, read with psycopg as the tiled_storage role.

    Tiled keeps tables of the same schema in one SQL table, one dataset id each.
    """
    import psycopg

    (source,) = node.data_sources()
    assert [a.data_uri for a in source.assets] == ["postgresql://postgres:5432/tiled_storage"]
    table, dataset = source.parameters["table_name"], source.parameters["dataset_id"]
    with psycopg.connect(storage_dsn(stack, values)) as conn:
        return conn.execute(f'select {columns} from "{table}" where _dataset_id = %s', (dataset,)).fetchall()


class StreamCollector:
    """Updates from a table subscription, one row each: values, sequence numbers, arrival times.

    Tiled holds callbacks by weak reference: pass the bound method `on_data` of a
    collector the test keeps, never a bare lambda.
    """

    def __init__(self, column: str):
        self.column = column
        self.values, self.sequences, self.arrived = [], [], {}
        self.changed = threading.Condition()

    def on_data(self, update):
        value = int(update.data()[self.column][0])
        with self.changed:
            self.values.append(value)
            self.sequences.append(update.sequence)
            self.arrived[value] = time.perf_counter()
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.values) >= count, timeout), (
                f"{len(self.values)} of {count} updates arrived: {self.values}")


def subscriber_replica(stack):
    """The replica holding the one open websocket, as HAProxy's tiled_stream backend counts them."""
    from scripts.lib import haproxy_stats

    for _ in range(50):
        busy = [s for s in haproxy_stats.servers(stack.stats_url, "tiled_stream") if s["sessions"]]
        if len(busy) == 1:
            return busy[0]["addr"]
        time.sleep(0.1)
    raise AssertionError(f"expected one replica with the websocket, HAProxy says {busy}")


