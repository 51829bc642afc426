"""Serve one Tiled replica, after refusing a configuration that cannot scale.

Tiled's own `--scalable` check looks only at keys and the streaming cache; it
accepts an SQLite catalog, DuckDB storage or a file store that is not shared,
any of which would silently split the data between replicas. Those are checked
here, before Tiled starts.
"""

import json
import os
import sys

from tiled.config import Config
from tiled.utils import parse

from tiled_stack import auth, front_door, input_guards, metrics, readiness

# Our own layers, added to the app Tiled builds, in this order: the /readyz route, the
# input guards, the front door (it checks credentials before any layer reads a body)
# and, outermost, Prometheus's key to the metrics route. Fixes to Tiled's own code are
# patches (tiled/patches), not here.
LAYERS = (readiness, input_guards, front_door, metrics)

SHARED_ARRAY_ROOT = "/data/arrays"


def problems(config) -> list[str]:
    found = []
    (tree,) = config.trees
    args = tree.args
    if not str(args["uri"]).startswith("postgresql"):
        found.append(f"catalog uri must be postgresql://…, not {args['uri'].split(':')[0]}")
    writable = [str(w) for w in args.get("writable_storage") or []]
    if not any(w.startswith("postgresql") for w in writable):
        found.append("writable_storage needs a postgresql:// database for tabular data")
    for w in writable:
        if w.startswith(("duckdb", "sqlite")):
            found.append(f"writable_storage {w.split(':')[0]} is local to one replica")
        elif "://" not in w or w.startswith("file:"):
            path = w.removeprefix("file://")
            if not path.startswith(SHARED_ARRAY_ROOT):
                found.append(f"writable file storage {path} is not on the shared volume {SHARED_ARRAY_ROOT}")
    cache = (config.streaming_cache.uri if config.streaming_cache else "") or ""
    if not cache.startswith("redis"):
        found.append("streaming_cache must be redis:// so every replica sees every update")
    return found


def load(config_path: str) -> Config:
    """config.yml with the authentication of TILED_AUTH (tiled_stack/auth.py)."""
    return Config.model_validate(auth.configure(parse(config_path), os.environ))


def main() -> None:
    config_path = os.environ.get("TILED_CONFIG", "/etc/tiled/config.yml")
    auth_problems = auth.problems(os.environ)
    if auth_problems:
        print("tiled-stack: the authentication settings are incomplete:", file=sys.stderr)
        for p in auth_problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(78)  # EX_CONFIG
    config = load(config_path)
    found = problems(config)
    if found:
        print("tiled-stack: this configuration cannot be scaled:", file=sys.stderr)
        for p in found:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(78)  # EX_CONFIG
    readable = json.loads(os.environ.get("TILED_CATALOG_READABLE_STORAGE") or "[]")
    print(f"tiled-stack: serving {config_path}; authentication: {auth.mode(os.environ)}; "
          f"readable storage: {readable or 'none'}", flush=True)
    # What `tiled serve config --scalable` does, with our layers added to the app (and no
    # print_server_info: it would write the API key, in a URL, to the container's log).
    import uvicorn
    from tiled.server.app import build_app_from_config
    from tiled.server.logging_config import LOGGING_CONFIG

    app = build_app_from_config(config, scalable=True)
    for layer in LAYERS:
        print(f"tiled-stack: {layer.attach(app)}", flush=True)
    uvicorn.run(app, **{"log_config": LOGGING_CONFIG, **config.uvicorn})


if __name__ == "__main__":
    main()
