"""A Docker SDK client, or a message that says how to get one working."""

import functools

import docker
import docker.errors

from scripts.lib.say import Failure


@functools.cache
def client() -> docker.DockerClient:
    try:
        c = docker.from_env(timeout=300)
        c.ping()
        return c
    except docker.errors.DockerException as err:
        raise Failure(f"cannot talk to the Docker Engine ({err})",
                      "start Docker (`systemctl start docker`) and make sure this user may use it "
                      "(root, or a member of the `docker` group)") from None


def project_containers(project: str, service: str | None = None, all: bool = True):
    labels = [f"com.docker.compose.project={project}"]
    if service:
        labels.append(f"com.docker.compose.service={service}")
    return client().containers.list(all=all, filters={"label": labels})


def swarm_task_containers(project: str, service: str | None = None, all: bool = False):
    """The containers of stack `project`'s tasks on this engine's node (Docker Swarm)."""
    labels = [f"com.docker.stack.namespace={project}"]
    if service:
        labels.append(f"com.docker.swarm.service.name={project}_{service}")
    return client().containers.list(all=all, filters={"label": labels})


def running(project: str, service: str):
    """A running container of `service` (on Swarm: a task on this node), or a Failure that says
    how to start one."""
    containers = project_containers(project, service, all=False) or swarm_task_containers(project, service)
    if not containers:
        raise Failure(f"the {service} service of project {project} is not running here",
                      "start the stack with `make up`, then rerun (on Swarm: run this on the node that runs it, "
                      "README \"Several hosts\")")
    return containers[0]


def backend_address(container) -> str:
    """The container's address on the stack's backend network, where replicas listen on :8000."""
    for name, network in container.attrs["NetworkSettings"]["Networks"].items():
        if name.endswith("_backend"):
            return network["IPAddress"]
    raise Failure(f"{container.name} is not on a *_backend network", "recreate it with `make up`")
