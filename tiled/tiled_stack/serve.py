"""Serve one Tiled replica, after refusing a configuration that cannot scale.

Tiled's own `--scalable` check looks only at keys and the streaming cache; it
accepts an SQLite catalog, DuckDB storage or a file store that is not shared,
any of which would silently split the data between replicas. Those are checked
here, before Tiled starts.
"""

import json
import os
import sys

from tiled.config import parse_configs

from tiled_stack import (child_count_batch, dependant_cache, front_door, generic_model_cache, input_guards,
                         node_alias_cache, plain_middleware, readiness, storage_pool_ping)

# Installed in this order: the CPU fixes (each with its own switch), then readiness,
# the storage pool's pre-ping, the input guards and, outermost, the front door (it
# checks credentials before any layer reads a body).
EXTENSIONS = (dependant_cache, node_alias_cache, generic_model_cache, child_count_batch, plain_middleware,
              readiness, storage_pool_ping, input_guards, front_door)

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


def main() -> None:
    config_path = os.environ.get("TILED_CONFIG", "/etc/tiled/config.yml")
    found = problems(parse_configs(config_path))
    if found:
        print("tiled-stack: this configuration cannot be scaled:", file=sys.stderr)
        for p in found:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(78)  # EX_CONFIG
    readable = json.loads(os.environ.get("TILED_CATALOG_READABLE_STORAGE") or "[]")
    print(f"tiled-stack: serving {config_path}; readable storage: {readable or 'none'}", flush=True)
    for extension in EXTENSIONS:
        print(f"tiled-stack: {extension.install()}", flush=True)
    # Tiled's own command line, in this process, so that the fix above applies.
    from tiled.commandline.main import main as tiled_cli

    sys.argv = ["tiled", "serve", "config", "--scalable", config_path]
    sys.exit(tiled_cli())


if __name__ == "__main__":
    main()
