"""Wait, with a deadline, until the stack is healthy and HAProxy sees the replicas UP."""

import time

from scripts.lib import haproxy_stats
from scripts.lib.compose import MONITORING, Stack, one_shot_services, profile_services
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
    expected = ["postgres", "redis", "tiled-init", "tiled", "haproxy"]
    if stack.monitoring:
        expected += profile_services(MONITORING)
    for service in expected:
        if service not in states:
            found.append(f"{service}: no container")
    for service, containers in states.items():
        for name, state in containers:
            if service in one_shot_services():
                if state.startswith("exited(") and state != "exited(0)":
                    raise Failure(f"the one-shot job {service} failed: {name} {state}",
                                  f"read `make logs SERVICE={service}`, fix the cause, rerun `make up`")
                if state != "exited(0)":
                    found.append(f"{name}: {state}")
            elif state != "healthy":
                found.append(f"{name}: {state}")
    if not found:
        up = haproxy_stats.up_count(stack.stats_url)
        if up != replicas:
            found.append(f"HAProxy sees {up}/{replicas} replicas UP")
    return found


def until(check, deadline_s: float, failure: str, next_step: str) -> None:
    """Call `check()` (→ what is still wrong) every second until it returns nothing; print
    each new state; a Failure `failure: …` after `deadline_s`. A Failure that `check` raises
    about a page that does not answer yet counts as one more thing to wait for."""
    deadline = time.monotonic() + deadline_s
    last = None
    while True:
        try:
            found = check()
        except Failure as failed:
            if "does not answer" not in failed.what:
                raise
            found = [failed.what]
        if not found:
            return
        if found != last:
            print(f"  waiting: {'; '.join(found)}", flush=True)
            last = found
        if time.monotonic() > deadline:
            raise Failure(f"{failure} after {deadline_s:.0f}s: {'; '.join(found)}", next_step)
        time.sleep(1)


def until_healthy(stack: Stack, replicas: int, deadline_s: float = DEADLINE_S) -> None:
    step(f"waiting for every service to be healthy and {replicas} replicas UP in HAProxy")
    until(lambda: problems(stack, replicas), deadline_s, "not healthy",
          "`make status` shows each service; `make logs SERVICE=<name>` shows why")
    ok(f"{replicas}/{replicas} replicas healthy and UP in HAProxy")
