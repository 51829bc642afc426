"""`make restore BACKUP=<dir> [FORCE=1]`: put a `make backup` back into a running stack.

Refuses a backup whose files do not match its manifest, and a stack that already
holds data (catalog nodes or array files) unless FORCE=1. The replicas are
stopped while the databases and the array volume are replaced (HAProxy answers
503 meanwhile), the catalog schema is brought up to this Tiled's version, and
the replicas are started again and waited for.
"""

import json
import os
import subprocess
from pathlib import Path

from scripts.lib import wait
from scripts.backup import ARRAYS, DATABASES, sha256
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers, running
from scripts.lib.postgres import sql
from scripts.lib.say import Failure, note, ok, run_main, step


def checked_backup() -> tuple[Path, dict]:
    raw = os.environ.get("BACKUP", "")
    if not raw:
        raise Failure("no backup given", "run `make restore BACKUP=backups/<name>` (see `ls backups/`)")
    source = Path(raw).resolve()
    manifest_path = source / "manifest.json"
    if not manifest_path.exists():
        raise Failure(f"{source} has no manifest.json: not a `make backup` directory", "check the BACKUP path")
    manifest = json.loads(manifest_path.read_text())
    step(f"checking {len(manifest['files'])} files of {source} against its manifest")
    for name, expected in manifest["files"].items():
        path = source / name
        if not path.exists() or sha256(path) != expected["sha256"]:
            raise Failure(f"{path} is missing or does not match its checksum: the backup is damaged",
                          "restore from another backup; nothing was changed in the stack")
    return source, manifest


def arrays_in_use(stack: Stack, replica) -> bool:
    code, output = replica.exec_run(["find", ARRAYS, "-mindepth", "1", "-print", "-quit"], user="tiled")
    return code == 0 and bool(output.strip())


def pipe_in(command: list[str], source: Path, what: str) -> None:
    with open(source, "rb") as stdin:
        done = subprocess.run(command, stdin=stdin, capture_output=True)
    if done.returncode:
        raise Failure(f"restoring {what} failed (exit {done.returncode}): "
                      f"{done.stderr.decode(errors='replace').strip()[-800:]}",
                      "fix the cause, then rerun `make restore … FORCE=1` (the stack is partly restored)")


def main() -> None:
    source, manifest = checked_backup()
    stack = Stack()
    postgres, replica = running(stack.project, "postgres"), running(stack.project, "tiled")
    if "com.docker.stack.namespace" in postgres.labels:
        raise Failure(f"project {stack.project} runs on Docker Swarm here: `make restore` is single-host",
                      "restore on one host, or by hand on Swarm (docs/swarm.md, Limits)")
    nodes = int(sql(postgres, "tiled_catalog", "select count(*) from nodes where id <> 0"))
    if (nodes or arrays_in_use(stack, replica)) and os.environ.get("FORCE") != "1":
        raise Failure(f"project {stack.project} already holds data ({nodes} catalog nodes besides the root, "
                      "or array files): restoring would replace it",
                      "restore into an empty stack (`make clean FORCE=1 && make up`), or add FORCE=1 to replace it")
    replicas = len(project_containers(stack.project, "tiled", all=False))
    step(f"stopping {replicas} Tiled replica(s) while data is replaced (HAProxy answers 503 meanwhile)")
    stack.run("stop", "tiled")
    for name, database in DATABASES.items():
        if name not in manifest["files"]:  # a backup from before tiled_authn: that database is left as it is
            note(f"the backup has no {name}: {database} is left as it is")
            continue
        step(f"pg_restore {name} → {database}")
        pipe_in(["docker", "exec", "-i", "-u", "postgres", postgres.name, "pg_restore", "-U", "postgres",
                 "--clean", "--if-exists", "--exit-on-error", "-d", database], source / name, database)
    step(f"arrays.tar → {ARRAYS}")
    pipe_in(stack.args("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "tiled", "-c",
                       f"find {ARRAYS} -mindepth 1 -delete && tar -C {ARRAYS} -xf -"),
            source / "arrays.tar", "the array volume")
    step("bringing the catalog and authentication schemas up to this Tiled's version (tiled-init)")
    stack.run("run", "--rm", "--no-deps", "tiled-init")
    step(f"starting {replicas} replica(s)")
    stack.run("start", "tiled")
    wait.until_healthy(stack, replicas)
    restored = int(sql(postgres, "tiled_catalog", "select count(*) from nodes"))
    if restored != manifest["catalog_nodes"]:
        raise Failure(f"the catalog has {restored} nodes, the backup {manifest['catalog_nodes']}",
                      "read the output above; rerun `make restore … FORCE=1`")
    if manifest["catalog_revision"] != sql(postgres, "tiled_catalog", "select version_num from alembic_version"):
        note("the catalog schema was upgraded from the backup's revision to this Tiled's")
    ok(f"restored {restored} catalog nodes, tables and arrays from {source} (taken {manifest['created']})")


if __name__ == "__main__":
    run_main(main)
