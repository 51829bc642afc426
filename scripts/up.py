"""`make up`: create .env if needed, build missing images, start the stack, wait for health.

Safe to rerun: existing secrets, images, volumes and containers are kept.
"""

import errno
import socket
import time

from scripts import build_images, env_file
from scripts.lib import monitoring, timings, tls, wait
from scripts.lib.compose import Stack
from scripts.lib.docker_api import project_containers, swarm_task_containers
from scripts.lib.say import Failure, note, ok, run_main, step


def check_port_free(stack: Stack, address: str, port: int, key: str, service: str = "haproxy") -> None:
    """Fail before Compose does, with a message that names the setting to change."""
    ours = any(
        str(port) == binding.get("HostPort")
        for c in project_containers(stack.project, service, all=False)
        for bindings in (c.attrs["NetworkSettings"]["Ports"] or {}).values() if bindings
        for binding in bindings
    )
    if ours:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise Failure(f"port {port} on {address} is already taken by another program",
                              f"set {key} in {stack.env_path} to a free port, or stop that program "
                              f"(`ss -ltnp 'sport = :{port}'` names it)") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise Failure(f"{address} is not an address of this host",
                              f"set TILED_BIND_ADDRESS in {stack.env_path} to one of this host's addresses "
                              "(or 0.0.0.0 for all)") from None
            raise


def main() -> None:
    started = time.monotonic()
    stack = Stack(env_file.ensure())
    if swarm_task_containers(stack.project, all=True):
        raise Failure(f"this engine runs tasks of the Swarm stack {stack.project}: a second PostgreSQL would share "
                      "its data volume", "use `make swarm-up` on the manager (README \"Several hosts\"), or another "
                      "COMPOSE_PROJECT_NAME")
    tls.check_exposure(stack.values, stack.env_path)
    check_port_free(stack, stack.bind_address, stack.port, "TILED_PORT")
    if stack.http_port:
        check_port_free(stack, stack.bind_address, stack.http_port, "TILED_HTTP_PORT")
    check_port_free(stack, "127.0.0.1", stack.stats_port, "HAPROXY_STATS_PORT")
    if stack.monitoring:
        check_port_free(stack, stack.prometheus_bind_address, stack.prometheus_port, "PROMETHEUS_PORT",
                        service="prometheus")
    ca = tls.ensure(stack.values, stack.env_path)
    # Not the test identity provider's images, unless its profile is on.
    build_images.main(set(stack.profiles))
    images_ready = time.monotonic()
    running = len(project_containers(stack.project, all=False))
    step(f"starting project {stack.project} with {stack.replicas} Tiled replicas")
    monitoring.remove_if_off(stack)
    stack.run("up", "--detach", "--remove-orphans", "--scale", f"tiled={stack.replicas}")
    wait.until_healthy(stack, stack.replicas)
    if stack.monitoring:
        monitoring.wait_for_targets(stack, stack.replicas)
    timings.record(f"up/{stack.project}", time.monotonic() - images_ready, replicas=stack.replicas,
                   was_running=running > 0, images_seconds=round(images_ready - started, 1))
    ok(f"Tiled is up at {stack.url}  ({stack.replicas} replicas behind HAProxy)")
    cacert = f"--cacert {ca} " if ca else ""
    if stack.auth == "single-user":
        note(f"API key:   TILED_SINGLE_USER_API_KEY in {stack.env_path}  "
             f"(grep TILED_SINGLE_USER_API_KEY {stack.env_path})")
        note(f"try:       curl {cacert}-H \"Authorization: Apikey $KEY\" {stack.url}/api/v1/metadata/")
    else:
        note(f"users:     TILED_AUTH={stack.auth}: from_uri('{stack.url}') asks who you are; or "
             f"`tiled profile create --name facility {stack.url}` and `tiled login` (README \"Users and access\")")
        note("keys:      make service-account NAME=… (a beamline's RunEngine) | make key FOR=… | make keys")
    tls.trust_hint(ca, stack.url)
    note(f"HAProxy:   {stack.stats_url}/stats   metrics: {stack.stats_url}/metrics")
    if stack.monitoring:
        note(f"Prometheus: {stack.prometheus_url}/alerts   page: {stack.prometheus_url}/consoles/tiled-stack.html")
    note("next:      make status | make logs | make scale N=… | make down")


if __name__ == "__main__":
    run_main(main)
