"""One behaviour suite, run against every deployment option.

- embedded:          SimpleTiledServer in this process (examples/embedded.py)
- serve-temp:        `make serve TEMP=1` (SQLite + DuckDB in a temp dir, in-process streaming cache)
- serve-persistent:  `make serve DATA_DIR=…`
- serve-redis:       `make serve STREAMING=1` (Redis from the stack's image: needs Docker)
- stack:             the scalable stack through HAProxy (needs Docker)

The first three need no Docker; the last two are in the live tier and fail, not
skip, without it.
"""

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from conftest import ROOT, free_port

sys.path.insert(0, str(ROOT / "examples"))


@dataclasses.dataclass
class Deployment:
    mode: str
    url: str
    api_key: str
    readable_dir: Path
    # The server's own process or thread, not only its port: a snapshot that is truthy
    # while it runs, and unchanged while nothing restarted it.
    alive: Callable[[], object]


class ServeProcess:
    """`make serve` in the background, stopped with SIGINT as Ctrl-C would."""

    def __init__(self, log: Path, port: int | None = None, **knobs):
        self.port = port or free_port()
        self.api_key = secrets.token_hex(16)
        env = {**os.environ, "PORT": str(self.port), "API_KEY": self.api_key, **knobs}
        self.log = log
        self.process = subprocess.Popen(["make", "--no-print-directory", "serve"], cwd=ROOT, env=env,
                                        stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"make serve exited {self.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"make serve did not become ready:\n{log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        """Ctrl-C to the whole process group, as a terminal sends it; returns the output."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=60)
        return self.log.read_text()


def replicas_running(stack) -> tuple:
    """Each Tiled replica (id, restarts), or () if one is not running."""
    from scripts.lib.docker_api import project_containers

    replicas = project_containers(stack.project, "tiled", all=True)
    if any(c.status != "running" for c in replicas):
        return ()
    return tuple(sorted((c.id, c.attrs["RestartCount"]) for c in replicas))


def readable(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("detectors")
    folder.chmod(0o755)
    return folder


MODES = [pytest.param(mode, marks=pytest.mark.local) for mode in ("embedded", "serve-temp", "serve-persistent")] + [
    pytest.param("serve-redis", marks=pytest.mark.live), pytest.param("stack", marks=pytest.mark.live)]


@pytest.fixture(scope="module", params=MODES)
def deployment(request, tmp_path_factory):
    mode = request.param
    if mode == "embedded":
        from embedded import start

        detectors = readable(tmp_path_factory)
        server = start(readable_storage=detectors)
        yield Deployment(mode, f"http://127.0.0.1:{server.port}", server.api_key, detectors,
                         lambda: server._server.thread.is_alive())
        server.close()
    elif mode.startswith("serve-"):
        if mode == "serve-redis":
            request.getfixturevalue("images")
        detectors = readable(tmp_path_factory)
        knobs = {"READABLE": str(detectors)}
        if mode == "serve-temp":
            knobs["TEMP"] = "1"
        else:
            knobs["DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
        if mode == "serve-redis":
            knobs["STREAMING"] = "1"
        server = ServeProcess(tmp_path_factory.mktemp("log") / "serve.log", **knobs)
        yield Deployment(mode, server.url, server.api_key, detectors, lambda: server.process.poll() is None)
        output = server.stop()
        assert "✓ Tiled stopped" in output, output[-3000:]
    else:
        stack = request.getfixturevalue("stack")
        key = request.getfixturevalue("api_key")
        detectors = Path(stack.values["TILED_READABLE_STORAGE"].split(":")[0])
        yield Deployment(mode, stack.local_url, key, detectors, lambda: replicas_running(stack))
