"""`make scale N=…`: change the number of Tiled replicas live, with no failed request.

HAProxy finds new replicas through Docker's DNS by itself. Before replicas are
removed, their HAProxy slots are drained (no new requests) and their open
requests allowed to finish; then Compose stops them with SIGINT, which lets
uvicorn complete anything still in flight.
"""

import os
import sys
import time

from scripts.lib import haproxy_stats, wait
from scripts.lib.compose import Stack
from scripts.lib.docker_api import backend_address, project_containers
from scripts.lib.say import Failure, note, ok, run_main, step

DRAIN_DEADLINE_S = 30


def replicas(stack: Stack) -> list:
    """The running replicas in Compose's container-number order."""
    return sorted(project_containers(stack.project, "tiled", all=False),
                  key=lambda c: int(c.labels.get("com.docker.compose.container-number", 0)))


def replicas_to_remove(stack: Stack, target: int):
    return replicas(stack)[target:]  # Compose removes the highest-numbered ones


def drain(stack: Stack, containers) -> list[str]:
    """Drain the containers' slots; return them ("backend/server") for `release` once they are stopped."""
    slots = []
    addresses = {backend_address(c) for c in containers}
    for backend in haproxy_stats.REPLICA_BACKENDS:
        for server in haproxy_stats.servers(stack.stats_url, backend):
            if server["addr"] in addresses:
                slots.append(f"{backend}/{server['name']}")
                haproxy_stats.admin(stack.project, f"set server {slots[-1]} state drain")
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while time.monotonic() < deadline:
        busy = [s for s in haproxy_stats.servers(stack.stats_url) if s["addr"] in addresses and s["sessions"]]
        if not busy:
            return slots
        time.sleep(0.2)
    note(f"requests still open after {DRAIN_DEADLINE_S}s; stopping anyway (uvicorn finishes them on SIGINT)")
    return slots


def gone_from_rotation(stack: Stack, addresses: set[str], timeout: float = 15) -> None:
    """Wait until HAProxy has marked the removed replicas' slots down (or freed them),
    so that making those slots ready again cannot send a request to a stopped process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s["addr"] in addresses and s["status"].startswith(("UP", "DRAIN", "NOLB"))
                   for backend in haproxy_stats.REPLICA_BACKENDS
                   for s in haproxy_stats.servers(stack.stats_url, backend)):
            return
        time.sleep(0.2)


def release(stack: Stack, containers, slots: list[str]) -> None:
    """After the drained containers are stopped: once HAProxy no longer counts them, make their
    slots ready for whoever comes next (a freed slot keeps its admin state, and a drained slot
    would never get traffic again)."""
    gone_from_rotation(stack, {backend_address(c) for c in containers})
    for slot in slots:
        haproxy_stats.admin(stack.project, f"set server {slot} state ready")


def target_count(stack: Stack) -> int:
    raw = os.environ.get("N") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not raw.isdigit() or not 1 <= int(raw) <= stack.max_replicas:
        raise Failure(f"N={raw!r} is not a replica count between 1 and TILED_MAX_REPLICAS ({stack.max_replicas})",
                      "run e.g. `make scale N=4`")
    return int(raw)


def scale_to(stack: Stack, target: int) -> None:
    leaving = replicas_to_remove(stack, target)
    drained = []
    if leaving:
        step(f"draining {len(leaving)} replica(s) in HAProxy: {', '.join(c.name for c in leaving)}")
        drained = drain(stack, leaving)
    step(f"scaling tiled to {target} replicas")
    stack.run("up", "--detach", "--no-deps", "--no-recreate", "--scale", f"tiled={target}", "tiled")
    release(stack, leaving, drained)
    wait.until_healthy(stack, target)
    ok(f"{target} replicas serving")


def main() -> None:
    stack = Stack()
    target = target_count(stack)
    scale_to(stack, target)
    if target != stack.replicas:
        note(f"`make up` returns to TILED_REPLICAS={stack.replicas} from {stack.env_path}; set it there to keep {target}")


if __name__ == "__main__":
    run_main(main)
