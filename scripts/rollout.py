"""`make rollout`: replace every Tiled replica, one at a time, with no failed request.

For a new image (after `make images`, e.g. a Tiled upgrade) or a changed
configuration (.env, tiled/config.yml). First the catalog migration job runs
(it does nothing when the schema is current). Then, for each old replica: one
new replica is started with the current image and configuration and waited for
until HAProxy sends it traffic; the old one is drained in HAProxy (no new
requests; open ones finish), stopped with SIGINT (uvicorn completes anything in
flight) and removed. Capacity never drops below the replica count.

A schema change that the running version cannot read needs downtime instead:
`make backup`, then `make up` (README, Operations).
"""

import time

from scripts import build_images, scale
from scripts.lib import wait
from scripts.lib.compose import Stack
from scripts.lib.say import Failure, ok, run_main, step

STOP_TIMEOUT_S = 30


def main() -> None:
    stack = Stack()
    old = scale.replicas(stack)
    if not old:
        raise Failure(f"project {stack.project} has no running Tiled replica", "start it with `make up`")
    n = len(old)
    if n + 1 > stack.max_replicas:
        raise Failure(f"a rollout needs one spare slot: {n} replicas and TILED_MAX_REPLICAS={stack.max_replicas}",
                      "`make scale N=…` one lower first, or raise TILED_MAX_REPLICAS (then `make down && make up`)")
    started = time.monotonic()
    build_images.main(set(stack.profiles))
    step("running the catalog migration job (tiled-init) before any new replica starts")
    stack.run("run", "--rm", "--no-deps", "tiled-init")
    for index, container in enumerate(old, 1):
        step(f"[{index}/{n}] starting a new replica next to {container.name}")
        stack.run("up", "--detach", "--no-deps", "--no-recreate", "--scale", f"tiled={n + 1}", "tiled")
        wait.until_healthy(stack, n + 1)
        step(f"[{index}/{n}] draining {container.name} in HAProxy, then stopping it")
        slots = scale.drain(stack, [container])
        container.stop(timeout=STOP_TIMEOUT_S)
        container.remove()
        scale.release(stack, [container], slots)
        wait.until_healthy(stack, n)
    names = ", ".join(c.name for c in scale.replicas(stack))
    ok(f"rolled out {n} replicas in {time.monotonic() - started:.0f}s: {names}")


if __name__ == "__main__":
    run_main(main)
