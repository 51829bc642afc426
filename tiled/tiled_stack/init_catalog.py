"""One-shot job: create the catalog schema if absent, then upgrade it if old.

Runs once before any replica starts (compose: service_completed_successfully),
because concurrent `init --if-not-exists` runs race and the losers crash.
"""

import os
import subprocess
import sys


def catalog_uri() -> str:
    password = os.environ["CATALOG_DB_PASSWORD"]
    return f"postgresql://tiled_catalog:{password}@postgres:5432/tiled_catalog"


def run(step: str, args: list[str]) -> None:
    print(f"▶ {step}", flush=True)
    done = subprocess.run(["tiled", "catalog", *args, catalog_uri()])
    if done.returncode:
        print(f"✗ {step} failed (exit {done.returncode}); see the output above", file=sys.stderr)
        sys.exit(done.returncode)


def main() -> None:
    run("creating the catalog schema if it does not exist", ["init", "--if-not-exists"])
    run("upgrading the catalog schema if it is older than this Tiled", ["upgrade-database"])
    print("✓ catalog ready", flush=True)


if __name__ == "__main__":
    main()
