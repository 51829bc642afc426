"""The stack on Docker Swarm (README "Several hosts"), run on a manager node.

  up        create .env if needed, then deploy or update the stack: databases first, then
            the catalog job, then replicas and HAProxy (rolling, new task first); waits
  scale N   change the replica count (Swarm stops a task with SIGINT; HAProxy retries
            idempotent requests elsewhere, and marks the task down within two checks)
  status    every service's tasks per node, then each replica as HAProxy sees it
  rollout   replace every replica, one at a time, new one first (same image and config)
  down      remove the services; volumes, the shared array folder and secrets stay

Safe to rerun. `docker` is the engine DOCKER_HOST names (default: this host's).
"""

import os
import subprocess
import sys
import time

from scripts import env_file
from scripts.lib import haproxy_stats, swarm, tls
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers
from scripts.lib.say import Failure, note, ok, run_main, step
from scripts.lib.wait import until


def until_haproxy_sees(stack: Stack, replicas: int, timeout: float = 120) -> None:
    url = swarm.stats_url(stack)

    def short() -> list[str]:
        up = haproxy_stats.up_count(url)
        return [] if up == replicas else [f"{up}/{replicas} replicas UP in HAProxy"]

    until(short, timeout,
          f"HAProxy ({haproxy_stats.redacted(url)}/stats) did not see {replicas} replicas UP",
          "`make swarm-status` shows which are not; `docker service logs <project>_tiled` says why")


def check_arrays_folder(stack: Stack) -> None:
    path, uid = stack.values.get("TILED_ARRAYS_PATH", ""), swarm.replica_uid()
    if not path.startswith("/"):
        raise Failure(f"TILED_ARRAYS_PATH={path!r} is not an absolute path",
                      f"set it in {stack.env_path} to the array folder on the shared filesystem, the same path on "
                      "every node (README \"Several hosts\")")
    if not os.path.isdir(path):
        note(f"{path} is not mounted on this manager; each node that runs a replica must have it")
    elif os.stat(path).st_uid != uid:
        raise Failure(f"TILED_ARRAYS_PATH={path} is owned by uid {os.stat(path).st_uid}; the replicas write as uid {uid}",
                      f"chown {uid}:{uid} {path} (on the shared filesystem, once)")


def check_replica_count(stack: Stack, replicas: int) -> None:
    if not 1 <= replicas <= stack.max_replicas - 1:
        raise Failure(f"{replicas} replicas: between 1 and TILED_MAX_REPLICAS - 1 ({stack.max_replicas - 1}; a "
                      "rolling update starts one more, and HAProxy and PostgreSQL are sized for TILED_MAX_REPLICAS)",
                      f"set TILED_REPLICAS (or N) lower, or raise TILED_MAX_REPLICAS in {stack.env_path}")


def up() -> None:
    started, since = time.monotonic(), swarm.manager_time()
    stack = Stack(env_file.ensure())
    info = swarm.manager_info()
    if project_containers(stack.project):
        raise Failure(f"this engine also runs project {stack.project} with Compose (`make up`): two PostgreSQL "
                      "servers would share one data volume", "`make down` first; README \"Several hosts\" says how "
                      "to move a single-host stack onto a Swarm")
    check_replica_count(stack, stack.replicas)
    step(f"deploying stack {stack.project} from manager {info['Name']} ({len(swarm.nodes())} nodes)")
    swarm.check_labels()
    swarm.check_tls(stack)
    check_arrays_folder(stack)
    ca = tls.ensure(stack.values, stack.env_path)
    if not swarm.services(stack.project):  # networks of a `make swarm-down` still going
        until(lambda: swarm.leftovers(stack.project), 120, "the last removal of the stack did not finish",
              "`docker network ls` on the manager shows what is left")
    document, secrets, configs = swarm.stack_file(stack, swarm.render(stack))
    path = swarm.write(stack, document)  # first: it refuses a secret left in clear text
    made = swarm.create_missing("secret", secrets, stack.project) + swarm.create_missing("config", configs,
                                                                                          stack.project)
    note(f"{len(secrets)} Docker secrets and {len(configs)} configs ({made} new); stack file {path}")
    for names in swarm.STAGES:
        step(f"deploying {', '.join(names) if names else 'every service'}; waiting until it runs")
        before = swarm.spec_fingerprints(stack.project)
        swarm.deploy(stack, swarm.subset(document, names), prune_services=names is None)
        if names == ("tiled-init",) and before.get("tiled-init") == swarm.spec_fingerprints(stack.project)["tiled-init"]:
            # Its spec did not change, so no task started: run it again, as `make up` does every time.
            swarm.run_cli("service", "update", "--detach", "--force", f"{stack.project}_tiled-init")
        swarm.until_converged(stack.project, names, since, timeout=300 + 60 * stack.replicas)
    until_haproxy_sees(stack, stack.replicas)
    swarm.prune("secret", set(secrets), stack.project)
    swarm.prune("config", set(configs), stack.project)
    swarm.say_converged(stack.project)
    ok(f"stack {stack.project} is up at {swarm.url(stack)} in {time.monotonic() - started:.0f}s "
       f"({stack.replicas} replicas behind HAProxy)")
    tls.trust_hint(ca, swarm.url(stack))
    note("next:      make swarm-status | make swarm-scale N=… | make swarm-rollout | make swarm-down")


def tiled_service(stack: Stack):
    service = swarm.services(stack.project).get("tiled")
    if not service:
        raise Failure(f"stack {stack.project} has no tiled service on this Swarm", "deploy it with `make swarm-up`")
    return service


def scale() -> None:
    stack = Stack()
    swarm.manager_info()
    raw = os.environ.get("N") or (sys.argv[2] if len(sys.argv) > 2 else "")
    if not raw.isdigit():
        raise Failure(f"N={raw!r} is not a replica count", "run e.g. `make swarm-scale N=4`")
    target, since = int(raw), swarm.manager_time()
    check_replica_count(stack, target)
    tiled_service(stack)
    step(f"scaling {stack.project}_tiled to {target} replicas")
    swarm.run_cli("service", "scale", "--detach", f"{stack.project}_tiled={target}")
    swarm.until_converged(stack.project, ("tiled",), since)
    until_haproxy_sees(stack, target)
    swarm.say_converged(stack.project)
    ok(f"{target} replicas serving")
    if target != stack.replicas:
        note(f"`make swarm-up` returns to TILED_REPLICAS={stack.replicas} from {stack.env_path}; set it there to keep {target}")


def rollout() -> None:
    stack = Stack()
    swarm.manager_info()
    service = tiled_service(stack)
    replicas = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
    started, since = time.monotonic(), swarm.manager_time()
    step(f"replacing {replicas} replicas one at a time, each new one healthy before an old one stops")
    swarm.run_cli("service", "update", "--detach", "--force", f"{stack.project}_tiled")
    swarm.until_converged(stack.project, ("tiled",), since, timeout=120 + 90 * replicas)
    until_haproxy_sees(stack, replicas)
    ok(f"rolled out {replicas} replicas in {time.monotonic() - started:.0f}s")


def status() -> None:
    stack = Stack()
    swarm.manager_info()
    step(f"stack {stack.project}: running tasks per node")
    found = swarm.services(stack.project)
    if not found:
        raise Failure(f"stack {stack.project} has no services on this Swarm", "deploy it with `make swarm-up`")
    swarm.say_converged(stack.project)
    for name, service in sorted(found.items()):
        for problem in swarm.problems(service)[:3]:
            note(f"{name}: {problem}")
    url = swarm.stats_url(stack)
    step(f"replicas as HAProxy sees them ({haproxy_stats.redacted(url)}/stats, user stats, backend tiled_http)")
    servers = haproxy_stats.servers(url)
    for s in servers:
        note(f"{s['name']:<11} {s['addr']:<16} {s['status']:<6} {s['sessions']} open requests")
    up = sum(s["status"] == "UP" for s in servers)
    note(f"{up} UP of {len(servers)} discovered; .env asks for TILED_REPLICAS={stack.replicas}")


def down() -> None:
    stack = Stack()
    swarm.manager_info()
    step(f"removing the services of stack {stack.project} (its volumes, the shared array folder and its Docker "
         "secrets stay)")
    # `stack rm` returns at once; its networks go once every task has stopped (a rerun while
    # they go complains that they are not found: what is left decides).
    subprocess.run(["docker", "stack", "rm", stack.project], capture_output=True)
    until(lambda: swarm.leftovers(stack.project), 120, "the stack's services and networks were not removed",
          "`docker service ls` and `docker network ls` on the manager show what is left")
    ok(f"stack {stack.project} removed; `make swarm-up` brings it back with its data")


COMMANDS = {"up": up, "scale": scale, "status": status, "rollout": rollout, "down": down}

if __name__ == "__main__":
    run_main(COMMANDS[sys.argv[1]])
