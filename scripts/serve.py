"""`make serve`: one Tiled process on this host, in the foreground (Ctrl-C stops it).

Option 2 of "Deploy Tiled for Bluesky": an SQLite catalog, DuckDB tables and an
array directory, persistent in DATA_DIR (default ./data) or temporary (TEMP=1).
Knobs (environment, all optional): HOST, PORT, API_KEY, TEMP=1, DATA_DIR,
READABLE=path1:path2 (read-only detector data), STREAMING=1 (websockets backed
by a Redis started here and stopped with the server) or REDIS_URL=redis://….

Tiled 0.2.20's `tiled serve catalog --cache` fails outside `--temp`, so this
always writes a config file and runs `tiled serve config`.

Ctrl-C (SIGINT to the terminal's whole process group) or SIGTERM stops it at any moment:
the handlers are installed first, and only set a flag, so no step can be cut in half.
Setup checks the flag between steps; Tiled, Redis and the `docker` command run in
sessions of their own, so the terminal's signal reaches them only through this script,
once. A second Ctrl-C kills Tiled at once.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from scripts.env_file import ROOT
from scripts.lib.say import Failure, note, ok, run_main, step

REDIS_IMAGE = "tiled-stack/redis:7"
SERVE_LABEL = "org.tiled-stack.serve-port"  # on a STREAMING=1 Redis container: which `make serve` owns it
GRACEFUL_SHUTDOWN_S = 5  # uvicorn's wait for open requests and websockets on the first Ctrl-C


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during setup: raised between steps, never from inside one."""


class Stop:
    """Ctrl-C and SIGTERM at any moment: the first stops Tiled (or setup), a second kills Tiled."""

    def __init__(self):
        self.count = 0
        self.forwarded = 0  # each signal goes to Tiled once, whether handle() or attach() sees it first
        self.server = None
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        self.count += 1
        if self.server is not None:
            self.forward()

    def forward(self):
        if self.forwarded >= self.count:
            return
        self.forwarded = self.count
        try:
            os.killpg(self.server.pid, signal.SIGINT if self.count == 1 else signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone

    def attach(self, server) -> None:
        """From now on a signal goes to Tiled; one that came while it was starting, too."""
        self.server = server
        if self.count:
            self.forward()

    def check(self) -> None:
        if self.count:
            raise Interrupted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readable_dirs(raw: str) -> list[str]:
    paths = [str(Path(p).resolve()) for p in re.split(r"[:,]", raw) if p.strip()]
    for path in paths:
        if not Path(path).is_dir():
            raise Failure(f"READABLE entry {path} is not a directory", "create it or fix READABLE=…")
    return paths


class Redis:
    """A Redis for STREAMING=1: the stack's own image if Docker has it, else a local redis-server."""

    def __init__(self, owner: int, stop: Stop):
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.owner = owner
        self.stop_requested = stop
        self.container = None
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        docker = shutil.which("docker")
        has_image = docker and subprocess.run([docker, "image", "inspect", REDIS_IMAGE],
                                              capture_output=True).returncode == 0
        if has_image:
            step(f"starting Redis ({REDIS_IMAGE}) on 127.0.0.1:{self.port}")
            # Named and labelled before it exists, so that stop() finds it even if this
            # process is told to stop while `docker run` is still creating it.
            self.container = f"tiled-serve-redis-{self.port}"
            subprocess.run(
                [docker, "run", "--detach", "--rm", "--name", self.container, "--label", f"{SERVE_LABEL}={self.owner}",
                 "--env", "REDIS_PASSWORD", "--publish", f"127.0.0.1:{self.port}:6379", REDIS_IMAGE],
                env={**os.environ, "REDIS_PASSWORD": self.password},
                capture_output=True, text=True, check=True, start_new_session=True)
        elif shutil.which("redis-server"):
            step(f"starting redis-server on 127.0.0.1:{self.port}")
            self.process = subprocess.Popen(
                ["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                start_new_session=True)
            self.process.stdin.write(f"port {self.port}\nbind 127.0.0.1\nsave \"\"\n"
                                     f"requirepass {self.password}\n")
            self.process.stdin.close()
        else:
            raise Failure("STREAMING=1 needs Redis: no tiled-stack/redis image and no redis-server",
                          "run `make images`, install redis-server, or pass REDIS_URL=redis://…")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.stop_requested.check()
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    ok("Redis answers PONG")
                    return
            except redis.RedisError:
                time.sleep(0.2)
        self.stop()
        raise Failure("Redis did not answer within 20 s", "check `docker logs` or redis-server's output")

    def stop(self) -> None:
        if self.container:
            subprocess.run(["docker", "rm", "--force", self.container], capture_output=True, start_new_session=True)
        if self.process:
            self.process.terminate()
            self.process.wait()


def config(data_dir: Path, api_key: str, readable: list[str], cache_uri: str, host: str, port: int) -> dict:
    return {
        "authentication": {"single_user_api_key": api_key, "allow_anonymous_access": False},
        "catalog": {
            "uri": f"sqlite:///{data_dir / 'catalog.db'}",
            "writable_storage": [str(data_dir / "data"), f"duckdb:///{data_dir / 'storage.duckdb'}"],
            "readable_storage": readable,
            "init_if_not_exists": True,
        },
        "streaming_cache": {"uri": cache_uri},
        # Lets a client fetch a run's Bluesky documents (run.documents()): `make migrate` uses it.
        "media_types": {"container": {"application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"}},
        "uvicorn": {"host": host, "port": port, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S},
    }


def main() -> None:
    stop = Stop()  # first: a Ctrl-C from here on is never lost
    host = os.environ.get("HOST") or "127.0.0.1"
    port = int(os.environ.get("PORT") or 8000)
    api_key = os.environ.get("API_KEY") or secrets.token_hex(32)
    if not re.fullmatch(r"[A-Za-z0-9]+", api_key):
        raise Failure("API_KEY may hold only letters and digits (Tiled's rule)", "choose another API_KEY")
    temporary = os.environ.get("TEMP") == "1"
    readable = readable_dirs(os.environ.get("READABLE", ""))
    with socket.socket() as s:
        # As uvicorn binds: a port whose old connections sit in TIME_WAIT (Tiled closed them at
        # the last Ctrl-C) is free; one that something listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise Failure(f"cannot listen on {host}:{port} ({err.strerror})",
                          "choose another port: `make serve PORT=8001`") from None
    if temporary:
        data_dir = Path(tempfile.mkdtemp(prefix="tiled-serve-"))
    else:
        data_dir = Path(os.environ.get("DATA_DIR") or ROOT / "data").resolve()
    config_dir = Path(tempfile.mkdtemp(prefix="tiled-serve-config-"))
    redis_server = server = None
    try:
        stop.check()
        (data_dir / "data").mkdir(parents=True, exist_ok=True)
        cache_uri = os.environ.get("REDIS_URL") or "memory"
        if os.environ.get("STREAMING") == "1" and not os.environ.get("REDIS_URL"):
            redis_server = Redis(port, stop)
            redis_server.start()
            cache_uri = redis_server.url
        stop.check()
        config_path = config_dir / "config.yml"
        # JSON is YAML; the file is private because it holds the API key.
        config_path.write_text(json.dumps(config(data_dir, api_key, readable, cache_uri, host, port), indent=2))
        config_path.chmod(0o600)
        kind = (f"temporary storage in {data_dir} (deleted on exit)" if temporary
                else f"persistent storage in {data_dir}")
        ok(f"Tiled on http://{host}:{port} with {kind}")
        note(f"API key:    {api_key}")
        note(f"streaming:  {'Redis' if cache_uri != 'memory' else 'in-process cache'}; readable: {readable or 'none'}")
        note("stop with Ctrl-C (twice to force)")
        stop.check()
        server = subprocess.Popen([str(Path(sys.executable).parent / "tiled"), "serve", "config", str(config_path)],
                                  start_new_session=True)
        stop.attach(server)
        code = server.wait()
    finally:
        if server is not None and server.poll() is None:  # setup failed after Tiled started
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if redis_server:
            redis_server.stop()
        shutil.rmtree(config_dir, ignore_errors=True)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    if code and not stop.count:
        raise Failure(f"Tiled exited with code {code}", "read its output above")
    ok("Tiled stopped")


if __name__ == "__main__":
    run_main(main)
