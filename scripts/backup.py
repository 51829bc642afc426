"""`make backup [BACKUP_DIR=…]`: a consistent, timestamped backup of the running stack.

Writes backups/<project>-<UTC time>/ (or BACKUP_DIR):
  catalog.dump   pg_dump -Fc of tiled_catalog (metadata)
  storage.dump   pg_dump -Fc of tiled_storage (tabular event data)
  authn.dump     pg_dump -Fc of tiled_authn (principals, sessions, API keys)
  arrays.tar     the shared array volume (/data/arrays)
  config/        compose.yaml, the override if any, tiled/config.yml, and .env
                 WITHOUT its secrets (keep .env itself safe separately)
  manifest.json  versions, row counts and a sha256 of every file

Order gives referential consistency while writers keep writing: the catalog is
dumped first, then the data it points at, so every node in catalog.dump finds its
rows and array chunks (data written after the catalog dump is extra, never
missing). Redis is not backed up: it holds only the last hour of streaming updates.

On Docker Swarm, run it on the node labelled tiled-stack.db (PostgreSQL runs there); the
arrays are read from TILED_ARRAYS_PATH, the shared filesystem every node mounts.

On success it records the time for Prometheus (tiled_stack_last_backup_timestamp_seconds,
alert BackupTooOld), whether or not monitoring is on.
"""

import datetime
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

from scripts import env_file
from scripts.lib import monitoring
from scripts.lib.compose import ROOT, Stack
from scripts.lib.docker_api import project_containers, running, swarm_task_containers
from scripts.lib.postgres import sql
from scripts.lib.say import Failure, ok, run_main, step

DATABASES = {"catalog.dump": "tiled_catalog", "storage.dump": "tiled_storage", "authn.dump": "tiled_authn"}
ARRAYS = "/data/arrays"


def exec_to_file(container, command: list[str], target: Path, user: str) -> None:
    """Stream a command's stdout from inside a container into a file; fail on a non-zero exit."""
    with open(target, "wb") as out:
        exec_into(container, command, out, user)


def exec_into(container, command: list[str], out, user: str) -> None:
    api = container.client.api
    exec_id = api.exec_create(container.id, command, user=user, stdout=True, stderr=True)["Id"]
    errors = []
    for stdout, stderr in api.exec_start(exec_id, stream=True, demux=True):
        if stdout:
            out.write(stdout)
        if stderr:
            errors.append(stderr)
    code = api.exec_inspect(exec_id)["ExitCode"]
    if code:
        raise Failure(f"`{' '.join(command)}` failed in {container.name} (exit {code}): "
                      f"{b''.join(errors).decode(errors='replace').strip()[-500:]}",
                      "check `make status`; nothing was changed in the stack")


def dump_catalog(postgres, target: Path) -> int:
    """pg_dump the catalog and return how many nodes *that dump* holds.

    Writers keep adding nodes while the backup runs, so a count taken beside the dump
    would not describe it. The dump is made inside the container, counted there from
    pg_restore's COPY rows (one line per row), then streamed out and removed."""
    inside = "/tmp/tiled-backup-catalog.dump"
    count = ("pg_restore --data-only --table=nodes -f - " + inside
             + " | awk '/^COPY /{c=1;next} /^\\\\\\.$/{c=0;next} c{n++} END{print n+0}'")
    try:
        exec_into(postgres, ["pg_dump", "-U", "postgres", "-Fc", "-d", "tiled_catalog", "-f", inside],
                  io.BytesIO(), "postgres")
        counted = io.BytesIO()
        exec_into(postgres, ["sh", "-c", count], counted, "postgres")
        exec_to_file(postgres, ["cat", inside], target, "postgres")
    finally:
        postgres.exec_run(["rm", "-f", inside], user="postgres")
    return int(counted.getvalue())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_config(stack: Stack, target: Path) -> None:
    target.mkdir()
    for source in [ROOT / "compose.yaml", ROOT / "compose.override.yaml", ROOT / "tiled" / "config.yml"]:
        if source.exists():
            shutil.copy2(source, target / source.name)
    secrets = set(env_file.all_secrets())
    lines = [line if line.split("=", 1)[0] not in secrets else f"{line.split('=', 1)[0]}=  # secret, not backed up"
             for line in stack.env_path.read_text().splitlines()]
    (target / "env.without-secrets").write_text("\n".join(lines) + "\n")


def main() -> None:
    stack = Stack()
    postgres = running(stack.project, "postgres")
    on_swarm = "com.docker.stack.namespace" in postgres.labels
    replica = None if on_swarm else running(stack.project, "tiled")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = Path(os.environ.get("BACKUP_DIR") or ROOT / "backups" / f"{stack.project}-{stamp}")
    if target.exists() and any(target.iterdir()):
        raise Failure(f"{target} already exists and is not empty", "choose another BACKUP_DIR")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # the dumps hold all the data
    step(f"backing up project {stack.project} into {target}")
    counts = {"catalog_revision": sql(postgres, "tiled_catalog", "select version_num from alembic_version")}
    # The catalog first, then the data it points at (see above).
    step("pg_dump tiled_catalog → catalog.dump")
    counts["catalog_nodes"] = dump_catalog(postgres, target / "catalog.dump")
    step("pg_dump tiled_storage → storage.dump")
    exec_to_file(postgres, ["pg_dump", "-U", "postgres", "-Fc", "-d", "tiled_storage"], target / "storage.dump",
                 "postgres")
    step("pg_dump tiled_authn → authn.dump")
    exec_to_file(postgres, ["pg_dump", "-U", "postgres", "-Fc", "-d", "tiled_authn"], target / "authn.dump",
                 "postgres")
    if on_swarm:
        shared = stack.values.get("TILED_ARRAYS_PATH") or ""
        if not os.path.isdir(shared):
            raise Failure(f"TILED_ARRAYS_PATH={shared!r} is not a folder on this node",
                          "run `make backup` on a node that mounts the shared filesystem at that path")
        step(f"{shared} (TILED_ARRAYS_PATH) → arrays.tar")
        with tarfile.open(target / "arrays.tar", "w") as tar:
            tar.add(shared, arcname=".")
    else:
        step(f"{ARRAYS} → arrays.tar")
        exec_to_file(replica, ["tar", "-C", ARRAYS, "-cf", "-", "."], target / "arrays.tar", "tiled")
    write_config(stack, target / "config")
    files = sorted(p for p in target.rglob("*") if p.is_file())
    manifest = {
        "created": stamp, "project": stack.project, **counts,
        "images": {c.labels.get("com.docker.compose.service")
                   or c.labels["com.docker.swarm.service.name"].removeprefix(f"{stack.project}_"): c.attrs["Config"]["Image"]
                   for c in project_containers(stack.project, all=False) or swarm_task_containers(stack.project)},
        "postgres": sql(postgres, "postgres", "show server_version"),
        "files": {str(p.relative_to(target)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in files) / 2**20
    monitoring.write_metric(stack, "tiled_stack_last_backup_timestamp_seconds",
                            "When the last `make backup` succeeded (Unix time).", round(time.time()))
    ok(f"backup of {counts['catalog_nodes']} catalog nodes written: {target} ({size:.1f} MiB)")
    if on_swarm:
        print("  restore: `make restore` is single-host; on Swarm, docs/swarm.md (Limits) says how")
    else:
        print(f"  restore into an empty stack with: make restore BACKUP={target}")


if __name__ == "__main__":
    run_main(main)
