"""Wait, with a deadline, until the stack is healthy and HAProxy sees the replicas UP."""

import time

from scripts.lib import haproxy_stats
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers
from scripts.lib.say import Failure, ok, step

DEADLINE_S = 300  # a cold first start runs initdb and the catalog migration


def service_states(stack: Stack) -> dict[str, list[tuple[str, str]]]:
    """service → [(container name, state)], state being its health, or exit code for one-shot jobs."""
    states: dict[str, list[tuple[str, str]]] = {}
    for c in project_containers(stack.project):
        service = c.labels.get("com.docker.compose.service", "?")
        s = c.attrs["State"]
        if s["Status"] == "exited":
            state = f"exited({s['ExitCode']})"
        else:
            state = s.get("Health", {}).get("Status") or s["Status"]
        states.setdefault(service, []).append((c.name, state))
    return states


def problems(stack: Stack, replicas: int) -> list[str]:
    states = service_states(stack)
    found = []
    for service in ("postgres", "redis", "tiled-init", "tiled", "haproxy"):
        if service not in states:
            found.append(f"{service}: no container")
    for service, containers in states.items():
        for name, state in containers:
            if service == "tiled-init":
                if state.startswith("exited(") and state != "exited(0)":
                    raise Failure(f"the catalog init job failed: {name} {state}",
                                  "read `make logs SERVICE=tiled-init`, fix the cause, rerun `make up`")
                if state != "exited(0)":
                    found.append(f"{name}: {state}")
            elif state != "healthy":
                found.append(f"{name}: {state}")
    if not found:
        up = haproxy_stats.up_count(stack.stats_url)
        if up != replicas:
            found.append(f"HAProxy sees {up}/{replicas} replicas UP")
    return found


def until_healthy(stack: Stack, replicas: int, deadline_s: float = DEADLINE_S) -> None:
    step(f"waiting for every service to be healthy and {replicas} replicas UP in HAProxy")
    deadline = time.monotonic() + deadline_s
    last = None
    while True:
        try:
            found = problems(stack, replicas)
        except Failure as failure:
            if "stats page" not in failure.what:
                raise
            found = [failure.what]
        if not found:
            ok(f"{replicas}/{replicas} replicas healthy and UP in HAProxy")
            return
        if found != last:
            print(f"  waiting: {'; '.join(found)}", flush=True)
            last = found
        if time.monotonic() > deadline:
            raise Failure(f"not healthy after {deadline_s:.0f}s: {'; '.join(found)}",
                          "`make status` shows each service; `make logs SERVICE=<name>` shows why")
        time.sleep(1)
